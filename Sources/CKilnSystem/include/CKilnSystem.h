#ifndef CKILNSYSTEM_H
#define CKILNSYSTEM_H
#include <spawn.h>
#include <sys/xattr.h>

/// pipe2(O_CLOEXEC): both ends close on exec, so concurrent spawns never inherit them.
int kiln_pipe_cloexec(int fds[2]);
/// posix_spawn_file_actions_addchdir_np, which Swift's Glibc module does not export.
int kiln_spawn_file_actions_addchdir(posix_spawn_file_actions_t *actions, const char *path);
/// posix_spawn_file_actions_addclosefrom_np: the child gets no descriptor from 3 up (a server's
/// listening socket must not live on in a runc that outlives it).
int kiln_spawn_file_actions_addclosefrom(posix_spawn_file_actions_t *actions, int from);

#endif
