/*
 * test_tg_yaml.c: the YAML loader (core/tg_yaml.c): tree shape, positions,
 * anchors and aliases, the errors it must report with file:line:col, and
 * the core-schema typed views.
 */
#include "tg_yaml.h"
#include "tg_test.h"

#include <stdlib.h>
#include <unistd.h>

static tg_yaml_node_t *load(tg_pool_t *pool, const char *yaml, char *err, size_t errlen) {
    return tg_yaml_load_string(pool, "t.yaml", yaml, strlen(yaml), err, errlen);
}

static void test_tree(void) {
    static const char yaml[] =
        "name: tollgate\n"
        "quoted: \"10\"\n"
        "list:\n"
        "  - 1\n"
        "  - 'two'\n"
        "  - {a: b}\n"
        "empty:\n"
        "block: |\n"
        "  line\n";
    char err[256];
    tg_pool_t *pool = tg_pool_create(4096);
    tg_yaml_node_t *root = load(pool, yaml, err, sizeof(err));

    CHECK_MSG(root != NULL, "%s", err);
    if (root == NULL) { tg_pool_destroy(pool); return; }
    CHECK_INT(root->type, TG_YAML_MAP);
    CHECK_INT(root->n, 5);
    CHECK_STR(root->keys[0]->scalar, "name");
    CHECK_STR(root->keys[4]->scalar, "block");   /* document order */

    tg_yaml_node_t *name = tg_yaml_map_get(root, "name");
    CHECK_STR(name->scalar, "tollgate");
    CHECK_INT(name->plain, 1);
    CHECK_INT(name->line, 1);
    CHECK_INT(name->col, 7);

    tg_yaml_node_t *quoted = tg_yaml_map_get(root, "quoted");
    long long i;
    CHECK_INT(quoted->plain, 0);
    CHECK_INT(tg_yaml_as_int(quoted, &i), 0);    /* quoted is always a string */

    tg_yaml_node_t *list = tg_yaml_map_get(root, "list");
    CHECK_INT(list->type, TG_YAML_SEQ);
    CHECK_INT(list->n, 3);
    CHECK_INT(list->line, 4);
    CHECK_INT(list->col, 3);
    CHECK_INT(tg_yaml_as_int(list->items[0], &i) && i == 1, 1);
    CHECK_STR(list->items[1]->scalar, "two");
    CHECK_INT(list->items[1]->plain, 0);
    CHECK_INT(list->items[2]->type, TG_YAML_MAP);
    CHECK_INT(list->items[2]->line, 6);
    CHECK_STR(tg_yaml_map_get(list->items[2], "a")->scalar, "b");

    CHECK(tg_yaml_is_null(tg_yaml_map_get(root, "empty")));
    tg_yaml_node_t *block = tg_yaml_map_get(root, "block");
    CHECK_STR(block->scalar, "line\n");
    CHECK_INT(block->plain, 0);

    CHECK(tg_yaml_map_get(root, "missing") == NULL);
    CHECK(tg_yaml_map_get(list, "name") == NULL);   /* not a map */
    CHECK(tg_yaml_map_get(NULL, "name") == NULL);
    tg_pool_destroy(pool);
}

static void test_aliases(void) {
    static const char yaml[] =
        "base: &b {x: 1, y: [a, b]}\n"
        "copy: *b\n"
        "s: &s hello\n"
        "t: *s\n"
        "redef: &s again\n"
        "u: *s\n";
    char err[256];
    tg_pool_t *pool = tg_pool_create(4096);
    tg_yaml_node_t *root = load(pool, yaml, err, sizeof(err));

    CHECK_MSG(root != NULL, "%s", err);
    if (root == NULL) { tg_pool_destroy(pool); return; }
    tg_yaml_node_t *copy = tg_yaml_map_get(root, "copy");
    CHECK_INT(copy->type, TG_YAML_MAP);
    CHECK_INT(copy->n, 2);
    CHECK_INT(tg_yaml_map_get(copy, "y")->n, 2);
    CHECK_STR(tg_yaml_map_get(root, "t")->scalar, "hello");
    CHECK_STR(tg_yaml_map_get(root, "u")->scalar, "again");   /* latest anchor wins */
    tg_pool_destroy(pool);
}

static void test_empty_documents(void) {
    static const char *const cases[] = { "", "# nothing here\n", "---\n", "--- ~\n", "\n\n" };
    for (size_t k = 0; k < tg_nelems(cases); k++) {
        char err[256];
        tg_pool_t *pool = tg_pool_create(4096);
        tg_yaml_node_t *root = load(pool, cases[k], err, sizeof(err));
        CHECK_MSG(root != NULL && root->type == TG_YAML_MAP && root->n == 0,
                  "case %zu: %s", k, root ? "not an empty map" : err);
        tg_pool_destroy(pool);
    }
}

/* Every error is one line "file:line:col: message". */
static const struct {
    const char *yaml;
    const char *err;
} error_cases[] = {
    { "a: 1\nb: 2\na: 3\n",
      "t.yaml:3:1: duplicate key \"a\" (first at line 1)" },
    { "m: {k: 1, j: 2, k: 3}\n",
      "t.yaml:1:17: duplicate key \"k\" (first at line 1)" },
    { "base: &b {x: 1}\nm:\n  <<: *b\n  y: 2\n",
      "t.yaml:3:3: merge keys (\"<<\") are not supported; repeat the keys or use an alias for the whole value" },
    { "a: *nope\n",
      "t.yaml:1:4: undefined alias \"nope\"" },
    { "a: &x [1, *x]\n",
      "t.yaml:1:11: undefined alias \"x\"" },
    { "a: 1\n---\nb: 2\n",
      "t.yaml:2:1: more than one document; a config is one document" },
    { "? [a, b]\n: 1\n",
      "t.yaml:1:3: map keys must be scalars" },
    { "a: !!int 5\n",
      "t.yaml:1:4: unsupported tag \"tag:yaml.org,2002:int\"" },
    { "a: [1, 2\nb: 3\n",
      "t.yaml:2:2: did not find expected ',' or ']' (while parsing a flow sequence at line 1)" },
    { "a: b: c\n",
      "t.yaml:1:5: mapping values are not allowed in this context" },
    { "a:\n  - 1\n - 2\n",
      "t.yaml:3:2: did not find expected key (while parsing a block mapping at line 1)" },
    { "a: \"\xff\"\n",
      "t.yaml:1:5: invalid leading UTF-8 octet" },
};

static void test_errors(void) {
    for (size_t k = 0; k < tg_nelems(error_cases); k++) {
        char err[256] = "";
        tg_pool_t *pool = tg_pool_create(4096);
        tg_yaml_node_t *root = load(pool, error_cases[k].yaml, err, sizeof(err));
        CHECK_MSG(root == NULL, "case %zu loaded", k);
        CHECK_STR(err, error_cases[k].err);
        tg_pool_destroy(pool);
    }
}

static void test_bounds(void) {
    char err[256];
    tg_pool_t *pool = tg_pool_create(4096);

    /* 70 nested flow sequences: deeper than the loader allows. */
    char deep[200];
    size_t n = 0;
    for (int i = 0; i < 70; i++) deep[n++] = '[';
    for (int i = 0; i < 70; i++) deep[n++] = ']';
    deep[n] = '\0';
    CHECK(load(pool, deep, err, sizeof(err)) == NULL);
    CHECK_STR(err, "t.yaml:1:66: nesting deeper than 64 levels");

    /* "Billion laughs": each level repeats the previous one ten times. */
    char laughs[2048];
    n = (size_t)snprintf(laughs, sizeof(laughs), "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for (int i = 1; i < 10; i++) {
        n += (size_t)snprintf(laughs + n, sizeof(laughs) - n, "a%d: &a%d [", i, i);
        for (int j = 0; j < 10; j++)
            n += (size_t)snprintf(laughs + n, sizeof(laughs) - n, "%s*a%d", j ? ", " : "", i - 1);
        n += (size_t)snprintf(laughs + n, sizeof(laughs) - n, "]\n");
    }
    CHECK(load(pool, laughs, err, sizeof(err)) == NULL);
    CHECK_MSG(strstr(err, "document too large") != NULL, "%s", err);
    tg_pool_destroy(pool);
}

static void test_file(void) {
    char path[] = "/tmp/tg_yaml_testXXXXXX", err[256];
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) return;
    static const char yaml[] = "listen: [\"127.0.0.1:8080\"]\nx: 1\nx: 2\n";
    CHECK_INT(write(fd, "listen: [\"127.0.0.1:8080\"]\n", 27), 27);
    close(fd);

    tg_pool_t *pool = tg_pool_create(4096);
    tg_yaml_node_t *root = tg_yaml_load_file(pool, path, err, sizeof(err));
    CHECK_MSG(root != NULL, "%s", err);
    if (root) CHECK_STR(tg_yaml_map_get(root, "listen")->items[0]->scalar, "127.0.0.1:8080");

    /* Errors in a file name the file. */
    FILE *f = fopen(path, "w");
    fputs(yaml, f);
    fclose(f);
    CHECK(tg_yaml_load_file(pool, path, err, sizeof(err)) == NULL);
    char want[256];
    snprintf(want, sizeof(want), "%s:3:1: duplicate key \"x\" (first at line 2)", path);
    CHECK_STR(err, want);

    unlink(path);
    CHECK(tg_yaml_load_file(pool, path, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "%s: cannot read: No such file or directory", path);
    CHECK_STR(err, want);
    tg_pool_destroy(pool);
}

/* Typed views: YAML 1.2 core schema, plain scalars only. -1 = not that type. */
static const struct {
    const char *yaml;     /* value of key v */
    int         is_null;
    int         as_bool;
    long long   as_int;
    int         is_int;
    double      as_number;
    int         is_number;
} typed_cases[] = {
    { "v: null",    1, -1, 0, 0, 0, 0 },
    { "v: ~",       1, -1, 0, 0, 0, 0 },
    { "v:",         1, -1, 0, 0, 0, 0 },
    { "v: NULL",    1, -1, 0, 0, 0, 0 },
    { "v: \"null\"", 0, -1, 0, 0, 0, 0 },
    { "v: true",    0,  1, 0, 0, 0, 0 },
    { "v: False",   0,  0, 0, 0, 0, 0 },
    { "v: yes",     0, -1, 0, 0, 0, 0 },     /* YAML 1.1 only: a string */
    { "v: 'true'",  0, -1, 0, 0, 0, 0 },
    { "v: 42",      0, -1, 42, 1, 42, 1 },
    { "v: -7",      0, -1, -7, 1, -7, 1 },
    { "v: +3",      0, -1, 3, 1, 3, 1 },
    { "v: 0x1f",    0, -1, 0, 0, 0, 0 },      /* decimal only */
    { "v: 99999999999999999999", 0, -1, 0, 0, 1e20, 1 },
    { "v: 1.5",     0, -1, 0, 0, 1.5, 1 },
    { "v: .5",      0, -1, 0, 0, 0.5, 1 },
    { "v: 1e3",     0, -1, 0, 0, 1000, 1 },
    { "v: -2.5E-1", 0, -1, 0, 0, -0.25, 1 },
    { "v: 1.2.3",   0, -1, 0, 0, 0, 0 },
    { "v: '5'",     0, -1, 0, 0, 0, 0 },
    { "v: 10m",     0, -1, 0, 0, 0, 0 },
};

static void test_typed(void) {
    tg_pool_t *pool = tg_pool_create(4096);
    for (size_t k = 0; k < tg_nelems(typed_cases); k++) {
        char err[256];
        tg_yaml_node_t *root = load(pool, typed_cases[k].yaml, err, sizeof(err));
        CHECK_MSG(root != NULL, "%s", err);
        if (root == NULL) continue;
        tg_yaml_node_t *v = tg_yaml_map_get(root, "v");
        int b = -1;
        long long i = 0;
        double d = 0;
        CHECK_MSG(tg_yaml_is_null(v) == typed_cases[k].is_null, "null: %s", typed_cases[k].yaml);
        if (!tg_yaml_as_bool(v, &b)) b = -1;
        CHECK_MSG(b == typed_cases[k].as_bool, "bool: %s", typed_cases[k].yaml);
        int is_int = tg_yaml_as_int(v, &i);
        CHECK_MSG(is_int == typed_cases[k].is_int && (!is_int || i == typed_cases[k].as_int),
                  "int: %s", typed_cases[k].yaml);
        int is_num = tg_yaml_as_number(v, &d);
        CHECK_MSG(is_num == typed_cases[k].is_number && (!is_num || d == typed_cases[k].as_number),
                  "number: %s", typed_cases[k].yaml);
    }
    /* .inf is a number but not finite; the JSON writer turns it into a string. */
    char err[256];
    double d = 0;
    tg_yaml_node_t *root = load(pool, "v: -.inf", err, sizeof(err));
    CHECK(root && tg_yaml_as_number(tg_yaml_map_get(root, "v"), &d) && d < 0 && d * 0 != 0);
    tg_pool_destroy(pool);
}

int main(void) {
    test_tree();
    test_aliases();
    test_empty_documents();
    test_errors();
    test_bounds();
    test_file();
    test_typed();
    TG_TEST_DONE();
}
