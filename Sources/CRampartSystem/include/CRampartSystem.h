#ifndef CRAMPART_SYSTEM_H
#define CRAMPART_SYSTEM_H

// The three Linux calls RampartSystem needs that a Swift import of Glibc cannot see: glibc
// declares them only under _GNU_SOURCE, which a Swift module import does not define (and
// defining it for Glibc alone would make a second, incompatible Glibc module). Nothing else
// belongs here: everything Swift can call directly is called from Swift.

/// setns(fd, CLONE_NEWNET): moves the calling thread into the network namespace `fd` refers to.
/// Returns 0, or -1 with errno set.
int rampart_setns_net(int fd);

/// memfd_create(name, MFD_CLOEXEC): an anonymous in-memory file, for a child's stdin, stdout
/// and stderr (see Command.swift). Returns a descriptor, or -1 with errno set.
int rampart_memfd(const char *name);

/// posix_spawn_file_actions_addclosefrom_np(actions, from) (glibc 2.34): the spawned child
/// closes every descriptor from `from` up before it runs (see Spawn.swift). The actions are
/// passed as an opaque pointer: Swift sees `posix_spawn_file_actions_t` from its own import.
/// Returns 0 or an error number.
int rampart_spawn_closefrom(void *actions, int from);

#endif
