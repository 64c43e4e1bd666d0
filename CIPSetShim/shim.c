#include "CIPSet.h"
#include <libipset/ipset.h>
#include <libipset/session.h>
#include <libipset/types.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

struct rampart_ipset {
    struct ipset *ipset;
    char msg[512];
};

static pthread_once_t types_once = PTHREAD_ONCE_INIT;
static void load_types(void) { ipset_load_types(); }

static int custom_error(struct ipset *ipset, void *p, int status, const char *msg, ...) {
    struct rampart_ipset *h = p;
    va_list ap;
    va_start(ap, msg);
    vsnprintf(h->msg, sizeof h->msg, msg, ap);
    va_end(ap);
    (void)ipset; (void)status;
    return -1;
}

static int standard_error(struct ipset *ipset, void *p) {
    struct rampart_ipset *h = p;
    struct ipset_session *s = ipset_session(ipset);
    const char *m = ipset_session_report_msg(s);
    snprintf(h->msg, sizeof h->msg, "%s", m ? m : "unknown ipset error");
    ipset_session_report_reset(s);
    return -1;
}

static int quiet_print(struct ipset_session *session, void *p, const char *fmt, ...) {
    (void)session; (void)p; (void)fmt;
    return 0;
}

rampart_ipset *rampart_ipset_new(void) {
    pthread_once(&types_once, load_types);
    struct rampart_ipset *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->ipset = ipset_init();
    if (!h->ipset) { free(h); return NULL; }
    ipset_custom_printf(h->ipset, custom_error, standard_error, quiet_print, h);
    ipset_envopt_set(ipset_session(h->ipset), IPSET_ENV_EXIST);
    return h;
}

void rampart_ipset_free(rampart_ipset *h) {
    if (!h) return;
    ipset_fini(h->ipset);
    free(h);
}

int rampart_ipset_run(rampart_ipset *h, const char *const *lines, size_t count, char *err, size_t errlen) {
    char buf[1024];
    for (size_t i = 0; i < count; i++) {
        snprintf(buf, sizeof buf, "%s", lines[i]);
        h->msg[0] = 0;
        if (ipset_parse_line(h->ipset, buf) < 0) {
            snprintf(err, errlen, "ipset: %s: %s", lines[i], h->msg[0] ? h->msg : "failed");
            return -1;
        }
    }
    return 0;
}
