#define _GNU_SOURCE
#include <sched.h>
#include <spawn.h>
#include <sys/mman.h>
#include "CRampartSystem.h"

int rampart_setns_net(int fd) {
    return setns(fd, CLONE_NEWNET);
}

int rampart_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}

int rampart_spawn_closefrom(void *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np((posix_spawn_file_actions_t *)actions, from);
}
