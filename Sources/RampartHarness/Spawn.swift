import Foundation
import RampartNetlink

/// Starts a program with posix_spawn and waits for it, output discarded: for timing external
/// baselines (`nft`, `iptables-restore`), where Foundation's `Process` adds tens of
/// milliseconds of its own and would flatter Rampart. With a namespace, the child is started
/// from a thread inside it, so it runs there without an `ip netns exec` in between.
/// Returns the exit status.
@discardableResult
public func spawnQuiet(_ arguments: [String], in namespace: NetworkNamespace = .current,
                       stdinPath: String? = nil) throws -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, stdinPath ?? "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = try namespace.perform { posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ) }
    guard rc == 0 else { throw HarnessError("posix_spawn \(arguments[0]) failed: \(String(cString: strerror(rc)))") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        guard errno == EINTR else { throw HarnessError("waitpid failed: errno \(errno)") }
    }
    // WIFEXITED / WEXITSTATUS are macros.
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}
