import Glibc
import RampartSystem
import Testing

@Suite("The process spawner") struct CommandTests {
    @Test func capturesStdoutStderrAndStatus() throws {
        let r = try Command(["sh", "-c", "echo out; echo err >&2; exit 3"]).run()
        #expect(r.status == 3 && !r.succeeded)
        #expect(r.stdout == "out\n")
        #expect(r.stderr == "err\n")
    }

    @Test func feedsStdin() throws {
        let text = String(repeating: "a line of input\n", count: 20_000)  // far more than a pipe holds
        let r = try Command(["cat"], input: .text(text)).run()
        #expect(r.succeeded && r.stdout == text)
    }

    @Test func aChildThatIgnoresItsInputIsNotAnError() throws {
        let r = try Command(["true"], input: .text(String(repeating: "x", count: 1 << 20))).run()
        #expect(r.succeeded)
    }

    /// A descriptor opened without O_CLOEXEC (a socket a library or a test made with `socket()`)
    /// does not reach the child: it starts with standard input, output and error only. One that
    /// did held a connection open after this process closed it (seen: a spawned rampartd kept
    /// another test's connections alive past their server's idle close).
    @Test func theChildInheritsNoDescriptorButItsStandardOnes() throws {
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let r = try Command(["sh", "-c", "ls /proc/self/fd"]).run()
        let open = Set(r.stdout.split(separator: "\n").compactMap { Int32($0) })
        #expect(!open.contains(fds[0]) && !open.contains(fds[1]), "\(open)")
        // ls's own directory descriptor is the one more: nothing from this process.
        #expect(open.subtracting([0, 1, 2]).count <= 1, "\(open)")
    }

    @Test func noInputIsDevNull() throws {
        #expect(try Command(["cat"]).run().stdout == "")
    }

    @Test func aMissingProgramIsAClearError() {
        do {
            _ = try Command(["rampart-no-such-program", "--flag"]).run()
            Issue.record("a missing program ran")
        } catch {
            guard case .notFound = error.reason else { Issue.record("\(error)"); return }
            #expect(error.description.contains("rampart-no-such-program --flag"))
            #expect(error.description.contains("not found"))
        }
        #expect(throws: CommandError.self) { try Command(["/nonexistent/tool"]).run() }
    }

    @Test func feedsAFile() throws {
        let path = "/tmp/rampart-system-input-\(getpid())"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = "from a file\n".withCString { write(fd, $0, 12) }
        close(fd)
        defer { unlink(path) }
        #expect(try Command(["cat"], input: .file(path)).run().stdout == "from a file\n")
    }

    @Test func aMissingInputFileNamesTheFile() {
        do {
            _ = try Command(["cat"], input: .file("/nonexistent/input")).run()
            Issue.record("ran with a missing input file")
        } catch {
            guard case .systemCall(let e) = error.reason else { Issue.record("\(error)"); return }
            #expect(e.errno == .ENOENT && e.name.contains("/nonexistent/input"))
        }
    }

    @Test func aSignalIsReportedAs128PlusIt() throws {
        #expect(try Command(["sh", "-c", "kill -9 $$"]).run().status == 128 + 9)
    }

    @Test func environmentAndPath() throws {
        let r = try Command(["sh", "-c", "echo $RAMPART_TEST_VAR; echo $PATH"], environment: ["RAMPART_TEST_VAR": "v1"]).run()
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.first == "v1")
        #expect(lines.last?.hasPrefix("/usr/sbin:/usr/bin:/sbin:/bin") == true)
    }

    @Test func timeoutKillsTheChild() {
        let start = monotonic()
        #expect(throws: CommandError.self) { try Command(["sleep", "5"], timeout: 0.2).run() }
        #expect(monotonic() - start < 2)
    }

    @Test func spawnPollAndSignal() throws {
        let child = try Command(["sleep", "5"], output: .discard).spawn()
        #expect(try child.poll() == nil)
        child.signal(SIGTERM)
        #expect(try child.wait() == 128 + SIGTERM)
        #expect(try child.poll() == 128 + SIGTERM)
    }

    @Test func discardedOutputIsEmpty() throws {
        let r = try Command(["sh", "-c", "echo hidden"], output: .discard).run()
        #expect(r.succeeded && r.stdout.isEmpty)
    }

    private func monotonic() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
