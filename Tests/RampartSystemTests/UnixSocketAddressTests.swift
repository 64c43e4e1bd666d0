import Glibc
import RampartSystem
import Testing

@Suite("Unix socket addresses") struct UnixSocketAddressTests {
    @Test func aPathTooLongIsRefused() {
        let long = "/tmp/" + String(repeating: "x", count: 120)
        #expect(throws: UnixSocketAddressError.tooLong(long, bytes: long.utf8.count, limit: 107)) { try UnixSocketAddress(long) }
        let fits = "/" + String(repeating: "y", count: 106)
        #expect(throws: Never.self) { try UnixSocketAddress(fits) }
        #expect(throws: UnixSocketAddressError.self) { try UnixSocketAddress(fits + "z") }
        #expect(throws: UnixSocketAddressError.empty) { try UnixSocketAddress("") }
        do { _ = try UnixSocketAddress(long) } catch { #expect(error.description.contains("at most 107")) }
    }

    @Test func bindAndConnect() throws {
        let path = "/tmp/rampart-system-test-\(getpid()).sock"
        unlink(path)
        defer { unlink(path) }
        let address = try UnixSocketAddress(path)
        let server = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(server) }
        try address.bind(server)
        #expect(listen(server, 1) == 0)
        let client = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        try address.connect(client)
        let other = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(other) }
        #expect(throws: SystemCallError.self) { try UnixSocketAddress(path + ".absent").connect(other) }
    }

    @Test func abstractNames() throws {
        let a = try UnixSocketAddress("@rampart-test")
        #expect(a.isAbstract)
        a.withSockaddr { _, length in
            #expect(Int(length) == MemoryLayout<sa_family_t>.size + "@rampart-test".utf8.count)
        }
    }
}
