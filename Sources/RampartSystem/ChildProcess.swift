#if canImport(Glibc)
import Glibc
#endif
import CRampartSystem

/// A started command: wait for it, poll it, signal it. Dropping the handle of a child that was
/// never waited for kills and reaps it, so no process outlives its owner unnoticed.
/// One owner at a time (not Sendable): it remembers the status it reaped.
public final class ChildProcess {
    public let command: [String]
    public let pid: pid_t
    /// The memfds holding stdout and stderr (`.capture`), else -1.
    private let stdoutFD: Int32
    private let stderrFD: Int32
    private var status: Int32?

    fileprivate init(command: [String], pid: pid_t, stdoutFD: Int32, stderrFD: Int32) {
        self.command = command
        self.pid = pid
        self.stdoutFD = stdoutFD
        self.stderrFD = stderrFD
    }

    deinit {
        if status == nil {
            kill(pid, SIGKILL)
            _ = try? wait()
        }
        if stdoutFD >= 0 { close(stdoutFD) }
        if stderrFD >= 0 { close(stderrFD) }
    }

    /// Waits for the child to exit; returns its status (exit code, or 128 + signal).
    @discardableResult
    public func wait() throws(CommandError) -> Int32 {
        if let status { return status }
        var raw: Int32 = 0
        do {
            try syscall("waitpid(\(pid))") { waitpid(pid, &raw, 0) }
        } catch {
            throw CommandError(command: command, reason: .systemCall(error))
        }
        let s = Self.decode(raw)
        status = s
        return s
    }

    /// The status if the child has exited, nil while it runs (waitpid with WNOHANG).
    public func poll() throws(CommandError) -> Int32? {
        if let status { return status }
        var raw: Int32 = 0
        let r: pid_t
        do {
            r = try syscall("waitpid(\(pid), WNOHANG)") { waitpid(pid, &raw, WNOHANG) }
        } catch {
            throw CommandError(command: command, reason: .systemCall(error))
        }
        guard r == pid else { return nil }
        let s = Self.decode(raw)
        status = s
        return s
    }

    /// Waits at most `seconds`; then kills the child (SIGKILL), reaps it and throws `.timedOut`.
    /// Polls with a backoff of up to 10 ms (a plain `wait()` costs nothing of the kind).
    @discardableResult
    public func wait(timeout seconds: Double) throws(CommandError) -> Int32 {
        let deadline = monotonicSeconds() + seconds
        var pause = 0.0005
        while true {
            if let s = try poll() { return s }
            let left = deadline - monotonicSeconds()
            if left <= 0 {
                signal(SIGKILL)
                try wait()
                throw CommandError(command: command, reason: .timedOut(seconds: seconds))
            }
            usleep(UInt32(min(pause, left) * 1e6))
            pause = min(pause * 2, 0.01)
        }
    }

    /// Sends `signal` to the child, if it has not been reaped yet.
    public func signal(_ signal: Int32) {
        if status == nil { kill(pid, signal) }
    }

    /// The captured stdout and stderr ("" for output that was not captured).
    public func collect(status: Int32) throws(CommandError) -> CommandOutput {
        do {
            return CommandOutput(status: status, stdout: try Self.readAll(stdoutFD), stderr: try Self.readAll(stderrFD))
        } catch {
            throw CommandError(command: command, reason: .systemCall(error))
        }
    }

    /// WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift does not import.
    static func decode(_ raw: Int32) -> Int32 {
        (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
    }

    private static func readAll(_ fd: Int32) throws(SystemCallError) -> String {
        guard fd >= 0 else { return "" }
        try syscall("lseek(output)") { lseek(fd, 0, SEEK_SET) }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try syscall("read(output)") { buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
            if n == 0 { break }
            data += buffer[0..<n]
        }
        return String(decoding: data, as: UTF8.self)
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

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
