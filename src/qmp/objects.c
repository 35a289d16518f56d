/*
 * The object registry behind object-add / object-del (see objects.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "qmp/objects.h"

typedef enum obj_kind { OBJ_CREDS, OBJ_AUTHZ } obj_kind;

typedef struct object {
    struct object *next;
    char *id;
    obj_kind kind;
    lm_tls_creds *creds;
    lm_authz *authz;
} object;

struct qmp_objects {
    pthread_mutex_t lock;
    object *head;
};

qmp_objects *qmp_objects_new(void)
{
    qmp_objects *o = calloc(1, sizeof(*o));
    if (o) {
        pthread_mutex_init(&o->lock, NULL);
    }
    return o;
}

static void object_free(object *ob)
{
    lm_tls_creds_unref(ob->creds);
    lm_authz_unref(ob->authz);
    free(ob->id);
    free(ob);
}

void qmp_objects_free(qmp_objects *o)
{
    if (!o) {
        return;
    }
    while (o->head) {
        object *ob = o->head;
        o->head = ob->next;
        object_free(ob);
    }
    pthread_mutex_destroy(&o->lock);
    free(o);
}

static object **find(qmp_objects *o, const char *id)
{
    object **p = &o->head;
    while (*p && strcmp((*p)->id, id) != 0) {
        p = &(*p)->next;
    }
    return p;
}

static int parse_endpoint(json_t *args, lm_tls_endpoint *ep, lm_error *err)
{
    const char *s = NULL;
    int ret = qmp_arg_str(args, "endpoint", false, &s, err);
    if (ret < 0) {
        return ret;
    }
    if (!s || !strcmp(s, "client")) {
        *ep = LM_TLS_ENDPOINT_CLIENT;
    } else if (!strcmp(s, "server")) {
        *ep = LM_TLS_ENDPOINT_SERVER;
    } else {
        return lm_error_set(err, -EINVAL, "Parameter 'endpoint' does not accept value '%s'", s);
    }
    return 0;
}

static int parse_policy(const char *s, const char *what, lm_authz_policy *p, lm_error *err)
{
    if (!strcmp(s, "allow")) {
        *p = LM_AUTHZ_ALLOW;
    } else if (!strcmp(s, "deny")) {
        *p = LM_AUTHZ_DENY;
    } else {
        return lm_error_set(err, -EINVAL, "Parameter '%s' does not accept value '%s'", what, s);
    }
    return 0;
}

/* What both kinds of TLS credentials take: no member outside known, the
 * directory, the endpoint, and the GnuTLS priority string. */
static int creds_args(json_t *args, const char *const *known, const char **dir,
                      lm_tls_endpoint *ep, const char **prio, lm_error *err)
{
    int ret = qmp_args_check(args, known, err);
    if (ret == 0) {
        ret = qmp_arg_str(args, "dir", true, dir, err);
    }
    if (ret == 0) {
        ret = parse_endpoint(args, ep, err);
    }
    if (ret == 0) {
        ret = qmp_arg_str(args, "priority", false, prio, err);
    }
    return ret;
}

static int make_x509(json_t *args, object *ob, lm_error *err)
{
    static const char *const known[] = { "qom-type", "id", "dir", "endpoint", "verify-peer",
                                         "priority", NULL };
    const char *dir = NULL, *prio = NULL;
    bool verify = true;
    lm_tls_endpoint ep;
    int ret = creds_args(args, known, &dir, &ep, &prio, err);
    if (ret == 0) {
        ret = qmp_arg_bool(args, "verify-peer", false, &verify, err);
    }
    if (ret == 0) {
        ret = lm_tls_creds_x509_new(dir, ep, verify, prio, &ob->creds, err);
    }
    return ret;
}

static int make_psk(json_t *args, object *ob, lm_error *err)
{
    static const char *const known[] = { "qom-type", "id", "dir", "endpoint", "username",
                                         "priority", NULL };
    const char *dir = NULL, *prio = NULL, *user = NULL;
    lm_tls_endpoint ep;
    int ret = creds_args(args, known, &dir, &ep, &prio, err);
    if (ret == 0) {
        ret = qmp_arg_str(args, "username", false, &user, err);
    }
    if (ret == 0) {
        ret = lm_tls_creds_psk_new(dir, user, ep, prio, &ob->creds, err);
    }
    return ret;
}

static int make_authz_simple(json_t *args, object *ob, lm_error *err)
{
    static const char *const known[] = { "qom-type", "id", "identity", NULL };
    const char *identity = NULL;
    int ret = qmp_args_check(args, known, err);
    if (ret == 0) {
        ret = qmp_arg_str(args, "identity", true, &identity, err);
    }
    return ret < 0 ? ret : lm_authz_simple_new(identity, &ob->authz, err);
}

static int make_authz_list(json_t *args, object *ob, lm_error *err)
{
    static const char *const known[] = { "qom-type", "id", "policy", "rules", NULL };
    static const char *const rule_known[] = { "match", "policy", "format", NULL };
    const char *pol = NULL;
    lm_authz_policy def = LM_AUTHZ_DENY;
    int ret = qmp_args_check(args, known, err);
    if (ret == 0) {
        ret = qmp_arg_str(args, "policy", false, &pol, err);
    }
    if (ret == 0 && pol) {
        ret = parse_policy(pol, "policy", &def, err);
    }
    json_t *rules = json_object_get(args, "rules");
    if (ret == 0 && rules && !json_is_array(rules)) {
        ret = lm_error_set(err, -EINVAL, "Invalid parameter type for 'rules', expected: array");
    }
    size_t n = rules ? json_array_size(rules) : 0;
    lm_authz_rule *r = calloc(n ? n : 1, sizeof(*r));
    if (!r) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; ret == 0 && i < n; i++) {
        json_t *rule = json_array_get(rules, i);
        const char *p = NULL, *f = NULL;
        if (!json_is_object(rule)) {
            ret = lm_error_set(err, -EINVAL, "Invalid parameter type for 'rules[%zu]', expected: "
                               "object", i);
            break;
        }
        ret = qmp_args_check(rule, rule_known, err);
        if (ret == 0) {
            ret = qmp_arg_str(rule, "match", true, &r[i].match, err);
        }
        if (ret == 0) {
            ret = qmp_arg_str(rule, "policy", true, &p, err);
        }
        if (ret == 0) {
            ret = parse_policy(p, "policy", &r[i].policy, err);
        }
        if (ret == 0) {
            ret = qmp_arg_str(rule, "format", false, &f, err);
        }
        if (ret == 0 && f && strcmp(f, "exact") != 0 && strcmp(f, "glob") != 0) {
            ret = lm_error_set(err, -EINVAL, "Parameter 'format' does not accept value '%s'", f);
        }
        r[i].format = f && !strcmp(f, "glob") ? LM_AUTHZ_GLOB : LM_AUTHZ_EXACT;
    }
    if (ret == 0) {
        ret = lm_authz_list_new(r, n, def, &ob->authz, err);
    }
    free(r);
    return ret;
}

int qmp_objects_add(qmp_objects *o, json_t *args, lm_error *err)
{
    const char *type = NULL, *id = NULL;
    int ret = qmp_arg_str(args, "qom-type", true, &type, err);
    if (ret == 0) {
        ret = qmp_arg_str(args, "id", true, &id, err);
    }
    if (ret < 0) {
        return ret;
    }
    object *ob = calloc(1, sizeof(*ob));
    if (!ob || !(ob->id = strdup(id))) {
        free(ob);
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    if (!strcmp(type, "tls-creds-x509")) {
        ob->kind = OBJ_CREDS;
        ret = make_x509(args, ob, err);
    } else if (!strcmp(type, "tls-creds-psk")) {
        ob->kind = OBJ_CREDS;
        ret = make_psk(args, ob, err);
    } else if (!strcmp(type, "authz-simple")) {
        ob->kind = OBJ_AUTHZ;
        ret = make_authz_simple(args, ob, err);
    } else if (!strcmp(type, "authz-list")) {
        ob->kind = OBJ_AUTHZ;
        ret = make_authz_list(args, ob, err);
    } else {
        ret = lm_error_set(err, -EINVAL, "Invalid parameter 'qom-type': unknown object type '%s' "
                           "(tls-creds-x509, tls-creds-psk, authz-simple, authz-list)", type);
    }
    if (ret == 0) {
        pthread_mutex_lock(&o->lock);
        object **slot = find(o, id);
        if (*slot) {
            ret = lm_error_set(err, -EEXIST, "attempt to add duplicate property '%s' to object "
                               "(type 'container')", id);
        } else {
            *slot = ob;
            ob = NULL;
        }
        pthread_mutex_unlock(&o->lock);
    }
    if (ob) {
        object_free(ob);
    }
    return ret;
}

static json_t *opt_value(const char *v)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true")) {
        return json_true();
    }
    if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false")) {
        return json_false();
    }
    return json_string(v);
}

int qmp_objects_add_opts(qmp_objects *o, const char *opts, lm_error *err)
{
    json_t *args;
    if (opts[0] == '{') {
        json_error_t je;
        args = json_loads(opts, 0, &je);
        if (!json_is_object(args)) {
            json_decref(args);
            return lm_error_set(err, -EINVAL, "--object: invalid JSON: %s", je.text);
        }
    } else {
        char *copy = strdup(opts);
        args = json_object();
        if (!copy || !args) {
            free(copy);
            json_decref(args);
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
        char *save = NULL;
        char *tok = strtok_r(copy, ",", &save);
        json_object_set_new(args, "qom-type", json_string(tok ? tok : ""));
        while ((tok = strtok_r(NULL, ",", &save))) {
            char *eq = strchr(tok, '=');
            if (!eq) {
                free(copy);
                json_decref(args);
                return lm_error_set(err, -EINVAL, "--object: '%s' is not key=value", tok);
            }
            *eq = '\0';
            json_object_set_new(args, tok, opt_value(eq + 1));
        }
        free(copy);
    }
    int ret = qmp_objects_add(o, args, err);
    json_decref(args);
    return ret;
}

int qmp_objects_del(qmp_objects *o, const char *id, lm_error *err)
{
    pthread_mutex_lock(&o->lock);
    object **slot = find(o, id);
    object *ob = *slot;
    if (ob) {
        *slot = ob->next;
    }
    pthread_mutex_unlock(&o->lock);
    if (!ob) {
        return lm_error_set(err, -ENOENT, "object '%s' not found", id);
    }
    object_free(ob); /* a running migration keeps its own references */
    return 0;
}

static json_t *cmd_object_add(void *opaque, json_t *args, lm_error *err)
{
    return qmp_objects_add(opaque, args, err) < 0 ? NULL : json_object();
}

static json_t *cmd_object_del(void *opaque, json_t *args, lm_error *err)
{
    static const char *const known[] = { "id", NULL };
    const char *id = NULL;
    if (qmp_args_check(args, known, err) < 0 || qmp_arg_str(args, "id", true, &id, err) < 0 ||
        qmp_objects_del(opaque, id, err) < 0) {
        return NULL;
    }
    return json_object();
}

void qmp_register_object_commands(qmp_server *s, qmp_objects *o)
{
    qmp_server_register(s, "object-add", cmd_object_add, o);
    qmp_server_register(s, "object-del", cmd_object_del, o);
}

static lm_tls_creds *resolve_creds(void *opaque, const char *id)
{
    qmp_objects *o = opaque;
    pthread_mutex_lock(&o->lock);
    object *ob = *find(o, id);
    lm_tls_creds *c = ob && ob->kind == OBJ_CREDS ? lm_tls_creds_ref(ob->creds) : NULL;
    pthread_mutex_unlock(&o->lock);
    return c;
}

static lm_authz *resolve_authz(void *opaque, const char *id)
{
    qmp_objects *o = opaque;
    pthread_mutex_lock(&o->lock);
    object *ob = *find(o, id);
    lm_authz *a = ob && ob->kind == OBJ_AUTHZ ? lm_authz_ref(ob->authz) : NULL;
    pthread_mutex_unlock(&o->lock);
    return a;
}

lm_tls_resolver qmp_objects_tls_resolver(qmp_objects *o)
{
    return (lm_tls_resolver){ .creds = resolve_creds, .authz = resolve_authz, .opaque = o };
}
