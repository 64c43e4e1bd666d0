#define _GNU_SOURCE
#include <sched.h>
#include <sys/mman.h>
#include "CRampartSystem.h"

int rampart_setns_net(int fd) {
    return setns(fd, CLONE_NEWNET);
}

int rampart_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}
