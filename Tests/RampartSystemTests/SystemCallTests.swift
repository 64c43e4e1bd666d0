import Glibc
import RampartSystem
import Testing

@Suite("The syscall funnel and Errno") struct SystemCallTests {
    @Test func retriesEINTRThenReturnsTheResult() throws {
        var calls = 0
        let r = try syscall("fake") { () -> Int32 in
            calls += 1
            if calls < 3 { errno = EINTR; return -1 }
            return 7
        }
        #expect(r == 7 && calls == 3)
    }

    @Test func typesTheErrnoAndNamesTheCall() {
        do {
            try syscall("open(/nonexistent/rampart)") { open("/nonexistent/rampart", O_RDONLY) }
            Issue.record("open of a missing file succeeded")
        } catch {
            #expect(error.errno == .ENOENT)
            #expect(error.name == "open(/nonexistent/rampart)")
            #expect(error.description == "open(/nonexistent/rampart) failed: ENOENT (No such file or directory)")
        }
    }

    @Test func errorNumberCallsAreTypedToo() {
        #expect(throws: SystemCallError("pthread_fake", .EBUSY)) { try errorNumberCall("pthread_fake") { EBUSY } }
        #expect(throws: Never.self) { try errorNumberCall("ok") { 0 } }
    }

    @Test func errnoText() {
        #expect(Errno.EPERM.description == "EPERM (Operation not permitted)")
        #expect(Errno(ECONNREFUSED).message == "Connection refused")
        #expect(Errno(9999).name == "errno 9999")
        #expect(Errno.EAGAIN == Errno(EAGAIN) && Set([Errno.EAGAIN, .EAGAIN]).count == 1)
    }
}
