// CIPSet: a tiny shim over libipset, so that group-membership deltas go to the kernel over
// netlink from inside Rampart's process (no `ipset` process on the hot path).
#ifndef RAMPART_CIPSET_H
#define RAMPART_CIPSET_H
#include <stddef.h>

/// An opaque libipset handle (struct ipset).
typedef struct rampart_ipset rampart_ipset;

/// A new handle, or NULL. The netlink socket is opened by the first command, in the network
/// namespace of the calling thread at that moment.
rampart_ipset *rampart_ipset_new(void);
void rampart_ipset_free(rampart_ipset *h);

/// Runs ipset commands in `ipset restore` syntax (one per line, `-exist` semantics: adding a
/// present member or deleting an absent one is no error). Returns 0, or -1 with a message in
/// `err` naming the failing line.
int rampart_ipset_run(rampart_ipset *h, const char *const *lines, size_t count, char *err, size_t errlen);
#endif
