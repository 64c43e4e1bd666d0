import Foundation
import RampartCore
import RampartHarness
import RampartStore
import Testing

/// The store's connection over TCP as production runs it: TLS that checks the server's
/// certificate (its CA and its name or address), no fall-back to plain text, and password or
/// client-certificate authentication, against a real PostgreSQL configured for each. Every
/// refusal is a clear error before anything is written.
@Suite("PostgreSQL store over TLS: certificates, names, passwords", .serialized, .tags(.kernel), .rootOnly)
struct PostgresTLSTests {
    /// The URL of the cluster's TCP port with these parameters.
    private func url(_ cluster: PostgresCluster, host: String = "localhost", user: String = "postgres", _ parameters: String) -> String {
        "postgres://\(user)@\(host):\(cluster.port)/\(cluster.database)?\(parameters)"
    }

    /// Opens the store at `url` (migrating it), creates group `group`, and reads it back.
    private func write(_ url: String, group: String, environment: [String: String] = [:]) throws {
        let store = try PostgresStore(location: PostgresLocation(url: url, environment: environment), migrate: true)
        _ = try store.createGroup(group, description: nil)
        #expect(try store.group(group) != nil)
    }

    /// The store refuses `url` with a StoreError whose message contains `why`; returns it.
    @discardableResult
    private func refused(_ url: String, _ why: String, environment: [String: String] = [:],
                         sourceLocation: SourceLocation = #_sourceLocation) -> String {
        do {
            try write(url, group: "never", environment: environment)
            Issue.record("\(url) was accepted", sourceLocation: sourceLocation)
            return ""
        } catch let error as StoreError {
            #expect(error.message.contains(why), "\(url): \(error.message)", sourceLocation: sourceLocation)
            return error.message
        } catch {
            Issue.record("\(url): not a StoreError: \(error)", sourceLocation: sourceLocation)
            return ""
        }
    }

    private func groups(_ cluster: PostgresCluster) throws -> [String] {
        try cluster.psql("SELECT id FROM groups ORDER BY id").split(separator: "\n").map(String.init)
    }

    /// `verify-full` accepts the server only with a certificate from the CA it was given, naming
    /// the host it dialled: a DNS entry for the name, or an IP entry for the address connected
    /// to. The system's roots (`sslrootcert=system`) do not vouch for a private CA. `require`
    /// encrypts without checking. `disable` meets the server's `hostnossl … reject`.
    @Test func verifyFullTrustsOnlyItsCAAndTheNameItDialled() throws {
        let pki = try ThrowawayPKI()
        defer { pki.remove() }
        let named = try pki.certificate("named", commonName: "localhost", altNames: ["DNS:localhost"])
        let addressed = try pki.certificate("addressed", commonName: "127.0.0.1", altNames: ["IP:127.0.0.1"])
        let cluster = try PostgresCluster(allowTCP: true)
        try cluster.start()
        defer { cluster.destroy() }
        try cluster.configureTCP(authentication: ["hostssl all all 127.0.0.1/32 trust", "hostnossl all all 127.0.0.1/32 reject"],
                                 tls: .init(certificate: named.certificate, key: named.key))
        let ca = "sslrootcert=\(pki.path("ca.pem"))"
        try write(url(cluster, "sslmode=verify-full&\(ca)"), group: "by-name")
        // The URL's default over TCP is verify-full.
        try write(url(cluster, ca), group: "by-default")
        // A daemon's two connections over it: the LISTEN hears a verb's NOTIFY, and a read armed
        // on it brings the page its host's log holds.
        let daemonLocation = try PostgresLocation(url: url(cluster, ca), environment: [:])
        let store = try PostgresStore(location: daemonLocation, migrate: false)
        let wakeups = PostgresWakeups(location: daemonLocation)
        let heard = Heard(), pages = Delivered()
        try wakeups.start { heard.add($0) }
        defer { wakeups.stop() }
        _ = try store.addInstance("web-1", Instance(host: "hv1", groups: ["by-name"], ips: [ip("10.0.0.5")], interface: "tap1"))
        #expect(heard.waitFor(count: 1, timeout: 5).last == .appended(hosts: ["hv1"]))
        let position = try store.entries(host: "hv1", after: 0, limit: 1000).head
        wakeups.arm(host: "hv1", after: position, limit: 1000, readingAhead: 16) { pages.add($0) }
        let ssh = try store.authorize(group: "by-name", rule: try rule(#"{"protocol":"tcp","ports":"22","cidr":"0.0.0.0/0"}"#, "by-name"))
        #expect(heard.waitFor(count: 2, timeout: 5).last == .appended(hosts: ["hv1"]))
        let got = try #require(pages.waitFor(count: 1, timeout: 5).first ?? nil)
        #expect(got.page.entries.map(\.sequence) == ssh.map(\.sequence) && got.page.entries.map(\.refresh) == [.rules("by-name")])
        refused(url(cluster, "sslmode=verify-full&sslrootcert=\(pki.path("other.pem"))"),
                "the server's certificate is not signed by a CA of sslrootcert (\(pki.path("other.pem")))")
        refused(url(cluster, "sslmode=verify-full&sslrootcert=system"), "the server's certificate is not signed by a CA of sslrootcert (the system's roots)")
        // A missing CA file is named; one that others can write is refused (they would choose
        // whom this trusts).
        refused(url(cluster, "sslrootcert=\(pki.path("missing.pem"))"), "cannot read sslrootcert \(pki.path("missing.pem")): No such file")
        chmod(pki.path("ca.pem"), 0o666)
        refused(url(cluster, ca), "sslrootcert \(pki.path("ca.pem")) has mode 0666: writable by group or others")
        chmod(pki.path("ca.pem"), 0o644)
        // The certificate names localhost, not 127.0.0.1.
        refused(url(cluster, host: "127.0.0.1", "sslmode=verify-full&\(ca)"), "the server's certificate names neither 127.0.0.1 nor the address connected to")
        // require: encrypted (the server takes nothing else), the certificate not checked.
        try write(url(cluster, "sslmode=require"), group: "unverified")
        let plain = refused(url(cluster, "sslmode=disable"), "cannot connect to the store")
        #expect(plain.contains("pg_hba.conf") && plain.contains("no encryption"), "\(plain)")

        // The same CA's certificate for the address: accepted for the address, and for the name
        // too, since NIOSSL matches IP entries against the address connected to whatever name was
        // dialled (why verify-full wants a CA of the operator's choosing: PostgresLocation).
        try cluster.configureTCP(authentication: ["hostssl all all 127.0.0.1/32 trust", "hostnossl all all 127.0.0.1/32 reject"],
                                 tls: .init(certificate: addressed.certificate, key: addressed.key))
        try write(url(cluster, host: "127.0.0.1", "sslmode=verify-full&\(ca)"), group: "by-address")
        try write(url(cluster, "sslmode=verify-full&\(ca)"), group: "by-name-at-the-address")
        // A certificate naming neither is refused for both.
        let elsewhere = try pki.certificate("elsewhere", commonName: "localhost", altNames: ["DNS:db.example", "IP:192.0.2.1"])
        try cluster.configureTCP(authentication: ["hostssl all all 127.0.0.1/32 trust", "hostnossl all all 127.0.0.1/32 reject"],
                                 tls: .init(certificate: elsewhere.certificate, key: elsewhere.key))
        refused(url(cluster, "sslmode=verify-full&\(ca)"), "the server's certificate names neither localhost nor the address connected to")
        refused(url(cluster, host: "127.0.0.1", "sslmode=verify-full&\(ca)"), "the server's certificate names neither 127.0.0.1 nor the address connected to")
        let written = ["by-address", "by-default", "by-name", "by-name-at-the-address", "unverified"]
        #expect(try groups(cluster) == written)

        // The CLI: exit 3 (store unreachable), the reason on stderr, nothing written.
        let cli = try rampart(["group", "create", "cli"], store: url(cluster, "sslmode=verify-full&sslrootcert=\(pki.path("other.pem"))"))
        #expect(cli.status == 3 && cli.err.contains("cannot connect to the store"), "\(cli.status) \(cli.err)")
        #expect(try groups(cluster) == written)
    }

    /// `require` and `verify-full` never fall back to plain text: a server that does not speak
    /// TLS is refused (and `disable` reaches it, so the refusal is about TLS alone).
    @Test func tlsIsNeverDowngradedToPlainText() throws {
        let pki = try ThrowawayPKI()
        defer { pki.remove() }
        let cluster = try PostgresCluster(allowTCP: true)
        try cluster.start()
        defer { cluster.destroy() }
        try cluster.configureTCP(authentication: ["host all all 127.0.0.1/32 trust"], tls: nil)
        refused(url(cluster, "sslmode=require"), "the server does not offer TLS, and sslmode=require never falls back to plain text")
        refused(url(cluster, "sslmode=verify-full&sslrootcert=\(pki.path("ca.pem"))"), "the server does not offer TLS, and sslmode=verify-full never")
        try write(url(cluster, "sslmode=disable"), group: "plain")
        #expect(try groups(cluster) == ["plain"])
    }

    /// Password (SCRAM-SHA-256, from PGPASSWORD or the URL) and client-certificate
    /// authentication. A wrong or missing password is refused by the server and never echoed;
    /// a client certificate must chain to the server's client CA and name the user; a client
    /// key others can read is refused before connecting.
    @Test func passwordsAndClientCertificatesAuthenticate() throws {
        let pki = try ThrowawayPKI()
        defer { pki.remove() }
        let server = try pki.certificate("server", commonName: "localhost", altNames: ["DNS:localhost"])
        let cluster = try PostgresCluster(allowTCP: true)
        try cluster.start()
        defer { cluster.destroy() }
        let tls = PostgresCluster.ServerTLS(certificate: server.certificate, key: server.key, clientCA: pki.path("ca.pem"))
        try cluster.psql("CREATE ROLE rampart_ctl LOGIN SUPERUSER PASSWORD 'correct horse'", database: "postgres")
        try cluster.configureTCP(authentication: ["hostssl all all 127.0.0.1/32 scram-sha-256"], tls: tls)
        let ca = "sslrootcert=\(pki.path("ca.pem"))"
        try write(url(cluster, user: "rampart_ctl", ca), group: "with-password", environment: ["PGPASSWORD": "correct horse"])
        try write("postgres://rampart_ctl:correct%20horse@localhost:\(cluster.port)/\(cluster.database)?\(ca)", group: "password-in-url")
        let wrong = refused(url(cluster, user: "rampart_ctl", ca), "password authentication failed", environment: ["PGPASSWORD": "battery staple"])
        #expect(!wrong.contains("battery"), "a password was echoed: \(wrong)")
        refused(url(cluster, user: "rampart_ctl", ca), "the server asks for a password: give it in PGPASSWORD")

        // Client certificates: the common name is the user.
        try cluster.configureTCP(authentication: ["hostssl all all 127.0.0.1/32 cert"], tls: tls)
        let ctl = try pki.certificate("ctl", commonName: "rampart_ctl")
        let stranger = try pki.certificate("stranger", commonName: "rampart_ctl", ca: "other")
        let someoneElse = try pki.certificate("someone", commonName: "postgres")
        try write(url(cluster, user: "rampart_ctl", "\(ca)&sslcert=\(ctl.certificate)&sslkey=\(ctl.key)"), group: "with-certificate")
        refused(url(cluster, user: "rampart_ctl", ca), "connection requires a valid client certificate")
        refused(url(cluster, user: "rampart_ctl", "\(ca)&sslcert=\(stranger.certificate)&sslkey=\(stranger.key)"),
                "the server refused the client certificate \(stranger.certificate): it must be signed by the server's client CA")
        refused(url(cluster, user: "rampart_ctl", "\(ca)&sslcert=\(someoneElse.certificate)&sslkey=\(someoneElse.key)"),
                "certificate authentication failed for user \"rampart_ctl\"")
        chmod(ctl.key, 0o640)
        refused(url(cluster, user: "rampart_ctl", "\(ca)&sslcert=\(ctl.certificate)&sslkey=\(ctl.key)"), "has mode 0640")
        #expect(try groups(cluster) == ["password-in-url", "with-certificate", "with-password"])
    }

    /// `connect_timeout` bounds the whole connect: a server that takes the TCP connection and
    /// never answers (here a socket that listens and never accepts) is given up on after it.
    @Test func aServerThatNeverAnswersIsGivenUpOnAfterTheConnectTimeout() throws {
        let (listener, port) = try silentLoopbackListener()
        defer { close(listener) }
        let started = Date()
        do {
            _ = try PostgresStore(location: PostgresLocation(url: "postgres://u@127.0.0.1:\(port)/d?sslmode=require&connect_timeout=1", environment: [:]), migrate: true)
            Issue.record("connected to a socket that never answers")
        } catch {
            #expect(error.message.contains("no answer within connect_timeout=1 s"), "\(error.message)")
        }
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 0.9 && waited < 4, "gave up after \(waited) s")
    }

    /// The TLS and timeout parameters are checked as the URL is read: a setting that would be
    /// ignored is refused, naming it.
    @Test func tlsParametersThatWouldBeIgnoredAreRefused() {
        let cases: [(String, String)] = [
            ("postgres://u@h/d?sslmode=require&sslrootcert=/ca.pem", "sslrootcert is used only by sslmode=verify-full"),
            ("postgres://u@h/d?sslmode=disable&sslrootcert=/ca.pem", "sslrootcert is used only by sslmode=verify-full"),
            ("postgres://u@h/d?sslmode=require&sslcert=/c.pem", "sslcert and sslkey go together"),
            ("postgres://u@h/d?sslmode=require&sslkey=/c.key", "sslcert and sslkey go together"),
            ("postgres://u@h/d?sslmode=disable&sslcert=/c.pem&sslkey=/c.key", "sslcert without TLS"),
            ("postgres://u@h/d", "needs sslrootcert=FILE"),
            ("postgres://u@h/d?sslmode=verify-full", "needs sslrootcert=FILE"),
            ("postgres://u@h/d?sslmode=require&connect_timeout=0", "connect_timeout 0 is not a whole number of seconds 1–3600"),
            ("postgres://u@h/d?sslmode=require&connect_timeout=2.5", "connect_timeout 2.5"),
        ]
        for (url, why) in cases {
            #expect { _ = try PostgresLocation(url: url, environment: [:]) } throws: {
                ($0 as? StoreError)?.message.contains(why) == true
            }
        }
        #expect((try? PostgresLocation(url: "postgres://u@h/d?sslmode=require&connect_timeout=12", environment: [:]))?.connectTimeout == 12)
        #expect((try? PostgresLocation(url: "postgres://u@h/d?sslmode=require", environment: [:]))?.connectTimeout == 5)
        #expect((try? PostgresLocation(url: "postgres://u@h/d?sslrootcert=system", environment: [:]))?.tls == .verifyFull)
    }
}
