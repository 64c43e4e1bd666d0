import Glibc
import RampartSystem
import Testing

@Suite("Network namespaces", .enabled(if: getuid() == 0, "needs root (ip netns add)"))
struct NetworkNamespaceTests {
    @Test func performRunsInsideAndComesBack() throws {
        let name = "rt-system-\(getpid())"
        _ = try Command(["ip", "netns", "add", name]).run()
        defer { _ = try? Command(["ip", "netns", "del", name]).run() }
        let before = try NetworkNamespace.currentIdentity()
        let inside = try NetworkNamespace.named(name).perform { try NetworkNamespace.currentIdentity() }
        #expect(inside != before)
        #expect(try NetworkNamespace.currentIdentity() == before)
        // a body that throws still comes back
        struct Boom: Error {}
        #expect(throws: Boom.self) { try NetworkNamespace.named(name).perform { throw Boom() } }
        #expect(try NetworkNamespace.currentIdentity() == before)
        // a child started from inside lives there: it sees only its own loopback
        let links = try Command(["ip", "-o", "link"], in: .named(name)).run()
        #expect(links.succeeded && links.stdout.split(separator: "\n").count == 1, "\(links.stdout)")
        #expect(try NetworkNamespace.currentIdentity() == before)
    }

    @Test func aMissingNamespaceIsNamed() {
        let name = "rt-system-absent-\(getpid())"
        #expect(throws: NoSuchNamespaceError(name: name)) { try NetworkNamespace.named(name).perform { 1 } }
        #expect(throws: NoSuchNamespaceError(name: "../x")) { try NetworkNamespace.named("../x").perform { 1 } }
        do {
            _ = try Command(["true"], in: .named(name)).run()
            Issue.record("started in a missing namespace")
        } catch {
            #expect(error.reason == .noSuchNamespace(name))
        }
    }
}
