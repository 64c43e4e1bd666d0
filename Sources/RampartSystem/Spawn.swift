#if canImport(Glibc)
import Glibc
#endif
import CRampartSystem

// posix_spawn of a `Command`: its input, output and signal set-up, its environment, its namespace.

extension Command {
    /// Starts the command and returns at once; `run()` is this and a wait.
    public func spawn() throws(CommandError) -> ChildProcess {
        func failed(_ reason: CommandError.Reason) -> CommandError { CommandError(command: arguments, reason: reason) }
        guard let path = executable() else { throw failed(.notFound(searchPath: Self.searchPath)) }
        var files: [Int32] = []  // descriptors to close in the parent once the child has started
        var outputs: (Int32, Int32) = (-1, -1)
        var keep = false
        defer {
            for fd in files { close(fd) }
            if !keep { if outputs.0 >= 0 { close(outputs.0) }; if outputs.1 >= 0 { close(outputs.1) } }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        do {
            switch input {
            case .none:
                posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            case .bytes(let bytes):
                let fd = try syscall("memfd_create(stdin)") { rampart_memfd("stdin") }
                files.append(fd)
                try Self.writeAll(fd, bytes)
                try syscall("lseek(stdin)") { lseek(fd, 0, SEEK_SET) }
                posix_spawn_file_actions_adddup2(&actions, fd, 0)
            case .file(let file):
                let fd = try syscall("open(\(file))") { open(file, O_RDONLY | O_CLOEXEC) }
                files.append(fd)
                posix_spawn_file_actions_adddup2(&actions, fd, 0)
            }
            switch output {
            case .capture:
                outputs.0 = try syscall("memfd_create(stdout)") { rampart_memfd("stdout") }
                outputs.1 = try syscall("memfd_create(stderr)") { rampart_memfd("stderr") }
                posix_spawn_file_actions_adddup2(&actions, outputs.0, 1)
                posix_spawn_file_actions_adddup2(&actions, outputs.1, 2)
            case .discard:
                posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
                posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            case .inherit:
                break
            }
        } catch {
            throw failed(.systemCall(error))
        }
        // The child gets standard input, output and error and nothing else: descriptors opened
        // without O_CLOEXEC (a test's raw sockets, a library's) would otherwise live on in `nft`,
        // `iptables-restore` or a daemon started from here, holding connections, files and
        // sockets open after this process closed them.
        let closing = rampart_spawn_closefrom(&actions, 3)
        guard closing == 0 else { throw failed(.systemCall(SystemCallError("posix_spawn_file_actions_addclosefrom_np", Errno(closing)))) }
        // The child starts with no signal blocked and every signal at its default action: a
        // caller that ignores SIGPIPE (SwiftNIO does) must not hand that on to `nft`.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var variables = environment
        variables["PATH"] = Self.searchPath
        var envp: [UnsafeMutablePointer<CChar>?] = variables.map { strdup("\($0.key)=\($0.value)") }
        var e = environ
        while let v = e.pointee {
            let entry = String(cString: v)
            let key = entry.prefix { $0 != "=" }
            if variables[String(key)] == nil { envp.append(strdup(v)) }
            e += 1
        }
        envp.append(nil)
        defer { for p in envp { free(p) } }

        var pid: pid_t = 0
        do {
            try namespace.perform { () throws(SystemCallError) in
                try errorNumberCall("posix_spawn(\(path))") { posix_spawn(&pid, path, &actions, &attributes, argv, envp) }
            }
        } catch let error as SystemCallError {
            throw failed(.systemCall(error))
        } catch let error as NoSuchNamespaceError {
            throw failed(.noSuchNamespace(error.name))
        } catch {
            throw failed(.systemCall(SystemCallError("posix_spawn(\(path)): \(error)", .EINVAL)))  // not reached: perform throws only these
        }
        keep = true
        return ChildProcess(command: arguments, pid: pid, stdoutFD: outputs.0, stderrFD: outputs.1)
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(SystemCallError) {
        var offset = 0
        while offset < bytes.count {
            let n = try syscall("write(stdin)") {
                bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            }
            offset += n
        }
    }
}
