#if canImport(Glibc)
import Glibc
#endif

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

    init(command: [String], pid: pid_t, stdoutFD: Int32, stderrFD: Int32) {
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
