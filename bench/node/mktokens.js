// bench/node/mktokens.js DIR: the JWTs of the S4/S8 scenarios, signed with
// jsonwebtoken (the library the Node contender verifies with) using the
// keys bench/lib/data.sh wrote to DIR. Writes token-hs256.txt,
// token-rs256.txt, token-es256.txt (one token each) and
// vary-hs256-10k.txt (10,000 distinct tokens as "Authorization: Bearer ..."
// lines for tg-bench --vary-file / wrk). Tokens expire in one day.
'use strict';
const fs = require('fs');
const path = require('path');
const jwt = require('jsonwebtoken');

const dir = process.argv[2];
const secret = fs.readFileSync(path.join(dir, 'hs256.secret'), 'utf8').trim();
const rsa = fs.readFileSync(path.join(dir, 'rsa.pem'));
const ec = fs.readFileSync(path.join(dir, 'ec.pem'));
const exp = Math.floor(Date.now() / 1000) + 86400;
const claims = (sub) => ({ sub, iss: 'bench', exp, roles: 'reader' });

fs.writeFileSync(path.join(dir, 'token-hs256.txt'), jwt.sign(claims('user-1'), secret, { algorithm: 'HS256', noTimestamp: true }) + '\n');
fs.writeFileSync(path.join(dir, 'token-rs256.txt'), jwt.sign(claims('user-1'), rsa, { algorithm: 'RS256', noTimestamp: true }) + '\n');
fs.writeFileSync(path.join(dir, 'token-es256.txt'), jwt.sign(claims('user-1'), ec, { algorithm: 'ES256', noTimestamp: true }) + '\n');
const lines = [];
for (let i = 0; i < 10000; i++) {
  lines.push('Authorization: Bearer ' + jwt.sign(claims('user-' + i), secret, { algorithm: 'HS256', noTimestamp: true }));
}
fs.writeFileSync(path.join(dir, 'vary-hs256-10k.txt'), lines.join('\n') + '\n');
