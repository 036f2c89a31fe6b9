/*
 * main.c: the command line, like nginx's:
 *   tollgate -c FILE      run (master + workers) in the foreground
 *   tollgate -t -c FILE   check the config: exit 0, or print every error
 *                         with its YAML path and exit 1
 *   tollgate -v           version and linked library versions
 */
#include "tg_conf.h"
#include "tg_log.h"
#include "tg_master.h"
#include "tg_version.h"

#include <ev.h>
#include <hiredis/hiredis.h>
#include <http_parser.h>
#include <luajit.h>
#include <openssl/crypto.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <yaml.h>

#define TG_DEFAULT_CONF "conf/tollgate.yaml"

static void usage(FILE *out) {
    fprintf(out,
            "usage: tollgate [-c FILE] [-t] [-v] [-h]\n"
            "  -c FILE  configuration file (default " TG_DEFAULT_CONF ")\n"
            "  -t       check the configuration and exit\n"
            "  -v       print version and linked library versions\n"
            "  -h       this help\n");
}

static void version(void) {
    unsigned long hp = http_parser_version();
    char pcre[64] = "";
    pcre2_config(PCRE2_CONFIG_VERSION, pcre);
    printf("tollgate %s\n", TG_VERSION);
    printf("libev %d.%d, http-parser %lu.%lu.%lu, %s, libyaml %s, hiredis %d.%d.%d, %s, PCRE2 %s\n",
           ev_version_major(), ev_version_minor(),
           (hp >> 16) & 255, (hp >> 8) & 255, hp & 255,
           OpenSSL_version(OPENSSL_VERSION), yaml_get_version_string(),
           HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH, LUAJIT_VERSION, pcre);
}

static void print_errors(tg_conf_errors_t *errs) {
    for (int i = 0; i < errs->n; i++) fprintf(stderr, "tollgate: %s\n", errs->msg[i]);
    if (errs->dropped) fprintf(stderr, "tollgate: ... and %d more error(s)\n", errs->dropped);
}

int main(int argc, char **argv) {
    const char *conf_path = TG_DEFAULT_CONF;
    int test = 0;
    int opt;
    while ((opt = getopt(argc, argv, "c:tvh")) != -1) {
        switch (opt) {
        case 'c': conf_path = optarg; break;
        case 't': test = 1; break;
        case 'v': version(); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    tg_conf_errors_t errs = { 0 };
    tg_conf_t *conf = tg_master_load_conf(conf_path, &errs);
    if (conf == NULL) {
        print_errors(&errs);
        fprintf(stderr, "tollgate: configuration file %s test failed\n", conf_path);
        tg_conf_errors_free(&errs);
        return 1;
    }
    if (test) {
        printf("tollgate: configuration file %s test is successful\n", conf_path);
        tg_conf_unref(conf);
        return 0;
    }
    return tg_master_run(conf_path, conf);
}
