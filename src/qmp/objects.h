/*
 * User-created objects, QEMU's object-add / object-del and --object:
 * TLS credentials (tls-creds-x509, tls-creds-psk) and authorization
 * (authz-simple, authz-list), by id.  An engine finds the ones its
 * tls-creds / tls-authz parameters name through qmp_objects_tls_resolver();
 * a migration holds its own references, so deleting an object never pulls
 * it from under a running one.
 */
#ifndef LIVEMIG_QMP_OBJECTS_H
#define LIVEMIG_QMP_OBJECTS_H

#include <jansson.h>

#include "livemig/error.h"
#include "livemig/tls.h"
#include "qmp/qmp.h"

typedef struct qmp_objects qmp_objects;

qmp_objects *qmp_objects_new(void);
void qmp_objects_free(qmp_objects *o);
/* object-add's arguments: {"qom-type": T, "id": ID, properties...}. */
int qmp_objects_add(qmp_objects *o, json_t *args, lm_error *err);
/* QEMU's command-line form: "TYPE,id=ID,key=value,..." or a JSON object. */
int qmp_objects_add_opts(qmp_objects *o, const char *opts, lm_error *err);
int qmp_objects_del(qmp_objects *o, const char *id, lm_error *err);
/* object-add, object-del. */
void qmp_register_object_commands(qmp_server *s, qmp_objects *o);
lm_tls_resolver qmp_objects_tls_resolver(qmp_objects *o);

#endif
