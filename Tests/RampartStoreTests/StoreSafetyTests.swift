import Foundation
import RampartCore
import RampartStore
import RampartSystem
import Testing

/// Runs sqlite3 on a store file (a second writer, to corrupt rows as a bad disk or hand edit would).
func sqlite3(_ path: String, _ sql: String) throws {
    let r = try Command(["sqlite3", path, "PRAGMA foreign_keys=OFF; " + sql], output: .inherit).run()
    #expect(r.status == 0)
}

/// A store path in a directory of its own (the store creates it, mode 0700), inside the
/// running test's scratch directory, which is removed when the test ends.
func tempStorePath() -> String {
    ScratchDirectory.url.appendingPathComponent("rampart-store-\(UUID().uuidString)").appendingPathComponent("rampart.db").path
}

/// One directory per test under the system's temporary directory, removed (with every store in
/// it) when the test ends, pass or fail. Applied to both store suites.
struct ScratchDirectory: SuiteTrait, TestTrait, TestScoping {
    @TaskLocal private static var current: URL?

    var isRecursive: Bool { true }

    /// The running test's directory.
    static var url: URL {
        guard let current else { preconditionFailure("the suite lacks the .scratchDirectory trait") }
        return current
    }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        // A suite gets no directory of its own: each of its tests does.
        guard !test.isSuite else { return try await function() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rampart-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try await Self.$current.withValue(dir) { try await function() }
    }
}

extension Trait where Self == ScratchDirectory {
    /// Each test gets a scratch directory (`ScratchDirectory.url`), removed when it ends.
    static var scratchDirectory: Self { Self() }
}

@Suite("SQLite store: fail closed, private files, exact export", .scratchDirectory) struct StoreSafetyTests {
    /// The daemon's open (`openExisting`) takes policy only from files root owns.
    @Test(.tags(.kernel), .rootOnly) func theDaemonsOpenNeverCreatesAStore() throws {
        let path = tempStorePath()
        do {
            _ = try SQLiteStore.openExisting(path: path)
            Issue.record("opened a store that does not exist")
        } catch {
            #expect(error.kind == .missing && error.message.contains(path), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(throws: StoreError.self) { try SQLiteStore(path: path, create: false) }
        #expect(!FileManager.default.fileExists(atPath: path))
        // a file that is not a Rampart store (empty, or another database) is refused, unchanged
        _ = try SQLiteStore(path: path)  // makes the directory 0700
        let other = (path as NSString).deletingLastPathComponent + "/other.db"
        FileManager.default.createFile(atPath: other, contents: Data(), attributes: [.posixPermissions: 0o600])
        do {
            _ = try SQLiteStore.openExisting(path: other)
            Issue.record("opened an empty file as a store")
        } catch {
            #expect(error.message.contains("not a Rampart store"), "\(error)")
        }
        #expect(try FileManager.default.attributesOfItem(atPath: other)[.size] as? Int == 0)
    }

    /// The daemon's open (`openExisting`) takes policy only from files root owns.
    @Test(.tags(.kernel), .rootOnly) func filesArePrivateAndUnsafeStoresAreRefused() throws {
        let path = tempStorePath()
        let st = try SQLiteStore(path: path)
        try populate(st)
        let dir = (path as NSString).deletingLastPathComponent
        var s = stat()
        #expect(stat(dir, &s) == 0 && s.st_mode & 0o777 == 0o700)
        for p in [path, path + "-wal", path + "-shm"] {
            #expect(stat(p, &s) == 0 && s.st_mode & 0o777 == 0o600, "\(p) \(String(s.st_mode & 0o777, radix: 8))")
        }
        #expect(try SQLiteStore.openExisting(path: path).warnings.isEmpty)
        func refused(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try SQLiteStore.openExisting(path: path)
                Issue.record("accepted: \(what)", sourceLocation: sourceLocation)
            } catch {
                #expect(error.kind == .unsafe && error.message.contains(what), "\(error)", sourceLocation: sourceLocation)
            }
        }
        chmod(path, 0o664); refused("mode 0664"); chmod(path, 0o600)
        chmod(path + "-wal", 0o606); refused("\(path)-wal has mode 0606"); chmod(path + "-wal", 0o600)
        chown(path, 65534, 0); refused("owned by uid 65534"); chown(path, 0, 0)
        chmod(dir, 0o770); refused("\(dir) has mode 0770"); chmod(dir, 0o700)
        chown(dir, 65534, 0); refused("uid 65534"); chown(dir, 0, 0)
        // readable by others: accepted with a warning
        chmod(path, 0o644)
        #expect(try SQLiteStore.openExisting(path: path).warnings.first?.contains("readable") == true)
        chmod(path, 0o600)
        // a symbolic link is refused
        let link = dir + "/link.db"
        symlink(path, link)
        #expect(throws: StoreError.self) { try SQLiteStore.openExisting(path: link) }
        #expect(try SQLiteStore.openExisting(path: path).warnings.isEmpty)
    }

    /// A symbolic link where a verb's `--store` points, or where SQLite would keep its log, is
    /// refused whether the store is created or opened, and the link's target stays as it was
    /// (SQLite follows links: a root verb would have written a database, or its log, there).
    @Test func aStoreIsNeverOpenedThroughALink() throws {
        let dir = (tempStorePath() as NSString).deletingLastPathComponent
        try #require(mkdir(dir, 0o700) == 0)
        let precious = dir + "/precious", store = dir + "/real.db"
        try #require(FileManager.default.createFile(atPath: precious, contents: Data()))
        _ = try SQLiteStore(path: store)
        let storeBytes = try Data(contentsOf: URL(fileURLWithPath: store))
        func refused(_ path: String, create: Bool, naming: String, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try SQLiteStore(path: path, create: create)
                Issue.record("opened \(path) (create: \(create))", sourceLocation: sourceLocation)
            } catch {
                #expect(error.kind == .unsafe && error.message.contains(naming) && error.message.contains("symbolic link"), "\(error)", sourceLocation: sourceLocation)
            }
        }
        // The store itself a link: to an empty file, to a store, dangling.
        symlink(precious, dir + "/to-precious.db")
        symlink(store, dir + "/to-store.db")
        symlink(dir + "/nowhere", dir + "/dangling.db")
        for name in ["to-precious.db", "to-store.db", "dangling.db"] {
            for create in [true, false] { refused(dir + "/" + name, create: create, naming: dir + "/" + name) }
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/nowhere"))
        // Its log a link (the store itself a regular file).
        let fresh = dir + "/fresh.db"
        symlink(precious, fresh + "-wal")
        refused(fresh, create: true, naming: fresh + "-wal")
        #expect(!FileManager.default.fileExists(atPath: fresh))
        _ = try SQLiteStore(path: dir + "/other.db")
        symlink(precious, dir + "/other.db-journal")
        refused(dir + "/other.db", create: false, naming: dir + "/other.db-journal")
        #expect(try Data(contentsOf: URL(fileURLWithPath: precious)).isEmpty)
        #expect(try Data(contentsOf: URL(fileURLWithPath: store)) == storeBytes)
    }

    /// An open store whose file is replaced (another file renamed over its path) or removed
    /// answers no more reads from the old file: each use fails naming what happened, where it
    /// went on reading the unlinked file (a daemon applying stale policy without a word). A
    /// write to the same file in place is no replacement.
    @Test func aReplacedOrRemovedStoreFileIsNoLongerRead() throws {
        let path = tempStorePath()
        let store = try SQLiteStore(path: path)
        try populate(store)
        let before = try store.document(forHost: "hv1")
        // Written in place by another connection (a verb): still the same file.
        _ = try SQLiteStore(path: path).removeInstance("bastion-3")
        #expect(try store.knowsHost("hv1"))
        // A backup restored with `mv`: a new file at the path.
        let other = (path as NSString).deletingLastPathComponent + "/restored.db"
        _ = try SQLiteStore(path: other)
        try #require(rename(other, path) == 0)
        for read in [{ _ = try store.document(forHost: "hv1") }, { _ = try store.knowsHost("hv1") }] as [() throws -> Void] {
            do {
                try read()
                Issue.record("read the replaced file")
            } catch let error as StoreError {
                #expect(error.kind == .unsafe && error.message.contains("was replaced since it was opened"), "\(error)")
            }
        }
        // A fresh open reads the new file.
        #expect(try SQLiteStore(path: path).document(forHost: "hv1") != before)
        // Removed.
        let path2 = tempStorePath()
        let store2 = try SQLiteStore(path: path2)
        try populate(store2)
        try #require(unlink(path2) == 0)
        do {
            _ = try store2.document(forHost: "hv1")
            Issue.record("read the removed file")
        } catch {
            #expect(error.kind == .missing && error.message.contains("is gone since it was opened"), "\(error)")
        }
    }

    @Test func aHostIsKnownOnceRegistered() throws {
        let st = try SQLiteStore(path: tempStorePath())
        try populate(st)
        #expect(try st.knowsHost("hv1") && st.knowsHost("hv3"))
        #expect(try !st.knowsHost("hv9") && !st.knowsHost("HV1"))
        // removing the last instance does not forget the host
        _ = try st.removeInstance("bastion-3")
        #expect(try st.knowsHost("hv3"))
        // importing a host's (even empty) document registers it
        _ = try st.importDocument(Document(host: "hv9"))
        #expect(try st.knowsHost("hv9"))
    }

    @Test func corruptedRowsMakeTheDocumentInvalid() throws {
        let cases: [(String, String)] = [
            ("UPDATE instances SET mac = '02:00:00:00:02:2g' WHERE id = 'db-1'", "instances.db-1.mac"),
            ("UPDATE instances SET ips = '10.0.2.21,fd00::zz' WHERE id = 'db-1'", "instances.db-1.ips"),
            ("UPDATE instances SET ips = '' WHERE id = 'db-1'", "instances.db-1.ips"),
            ("UPDATE instances SET interface = 'a-very-long-interface-name' WHERE id = 'db-1'", "instances.db-1.interface"),
            ("UPDATE instances SET interface = NULL WHERE id = 'db-1'", "instances.db-1.interface"),
            ("UPDATE groups SET rules = '[{\"protocol\":\"tcp\",\"ports\":\"99999\",\"cidr\":\"0.0.0.0/0\"}]' WHERE id = 'db'", "ports"),
            ("UPDATE groups SET rules = '[{\"protocol\":\"tcp\",\"cidr\":\"10.0.0.1/8\"}]' WHERE id = 'db'", "cidr"),
            ("UPDATE instance_groups SET group_id = 'gone' WHERE instance = 'db-1'", "gone"),
        ]
        for (corrupt, names) in cases {
            let st = try SQLiteStore(path: tempStorePath())
            try populate(st)
            let good = try st.document(forHost: "hv1")
            #expect(good.instances["db-1"]?.mac != nil)
            try sqlite3(st.path, corrupt)
            do {
                let doc = try st.document(forHost: "hv1")
                Issue.record("\(corrupt): read as \(doc.instances["db-1"].map { "\($0)" } ?? "-")")
            } catch {
                #expect(error.kind == .invalid && error.message.contains(names), "\(corrupt): \(error)")
            }
        }
        // single-record reads fail too instead of dropping the value
        let st = try SQLiteStore(path: tempStorePath())
        try populate(st)
        try sqlite3(st.path, "UPDATE instances SET mac = 'nonsense' WHERE id = 'db-1'")
        #expect(throws: StoreError.self) { try st.instance("db-1") }
        #expect(throws: StoreError.self) { try st.memberRecords(of: "db") }
    }

    /// A writer keeps changing what web references (create gN, web → gN, revoke, …); every
    /// document read meanwhile must be one consistent state, or it would fail validation (a rule
    /// naming a group the document does not list).
    @Test func aDocumentIsReadInOneSnapshot() throws {
        let path = tempStorePath()
        let reader = try SQLiteStore(path: path)
        try populate(reader)
        let writer = try SQLiteStore(path: path)
        final class Flag: @unchecked Sendable { var done = false; let lock = NSLock() }
        let flag = Flag()
        let t = Thread {
            for i in 0..<150 {
                _ = try? writer.createGroup("x\(i)", description: nil)
                let r = try! RulesCodec.parseRule(#"{"protocol":"tcp","ports":"7\#(i % 10)","group":"x\#(i)"}"#, group: "web", references: ["x\(i)"])
                _ = try? writer.authorize(group: "web", rule: r)
                _ = try? writer.revoke(group: "web", rule: r, id: nil)
                _ = try? writer.deleteGroup("x\(i)")
            }
            flag.lock.withLock { flag.done = true }
        }
        t.start()
        var reads = 0
        var failures: [String] = []
        while !flag.lock.withLock({ flag.done }) {
            do { _ = try reader.document(forHost: "hv1") } catch { failures.append(error.message) }
            reads += 1
        }
        #expect(failures.isEmpty, "\(failures.count) of \(reads) reads inconsistent: \(failures.first ?? "")")
        #expect(reads > 10)
    }

    /// Every host's export, imported into a fresh store, comes back identical (and so do the
    /// daemon's documents); importing an export into its own store changes nothing; the rules
    /// of a group a host only references survive.
    @Test func exportThenImportRoundTripsExactly() throws {
        let st = try SQLiteStore(path: tempStorePath())
        try populate(st)
        // admin (only referenced on hv1) has rules, one referencing ops (member-less, with rules)
        _ = try st.createGroup("ops", description: "operators")
        _ = try st.authorize(group: "ops", rule: try rule(#"{"protocol":"icmp","cidr":"10.0.0.0/8"}"#, "ops"))
        _ = try st.authorize(group: "admin", rule: try rule(#"{"protocol":"tcp","ports":"22","cidr":"192.0.2.0/24"}"#, "admin"))
        _ = try st.authorize(group: "admin", rule: try rule(#"{"protocol":"tcp","ports":"9100","group":"ops"}"#, "admin", refs: ["ops"]))
        _ = try st.addInstance("mac-2", Instance(host: "hv2", groups: ["web", "admin"], ips: [ip("10.0.1.14"), ip("fd00::14")], interface: "tapm2",
                                                 mac: MACAddress("02:00:00:00:01:14")))
        _ = try st.setGuardedPrefixes(host: "hv1", ["tap", "vnet"])
        let hosts = try st.hosts()
        let exports = try hosts.map { try st.exportDocument(forHost: $0).jsonText() }
        let documents = try hosts.map { try st.document(forHost: $0) }
        for (h, e) in zip(hosts, exports) {
            let doc = try Document.parse(json: e)
            #expect(doc.groups["admin"]?.rules.count == 2, "\(h)")
            #expect(doc.guardedPrefixes == (h == "hv1" ? ["tap", "vnet"] : []), "\(h)")
            // what the kernel gets is the same as from the daemon's document
            #expect(Compiler.compile(doc) == Compiler.compile(try st.document(forHost: h)), "\(h)")
        }
        // into the same store: nothing changes
        for e in exports { _ = try st.importDocument(try Document.parse(json: e)) }
        #expect(try hosts.map { try st.document(forHost: $0) } == documents)
        #expect(try hosts.map { try st.exportDocument(forHost: $0).jsonText() } == exports)
        // into a fresh store, in any order
        for order in [exports, exports.reversed()] {
            let fresh = try SQLiteStore(path: tempStorePath())
            for e in order { _ = try fresh.importDocument(try Document.parse(json: e)) }
            #expect(try fresh.hosts() == hosts)
            for (i, h) in hosts.enumerated() {
                #expect(try fresh.exportDocument(forHost: h).jsonText() == exports[i], "\(h)")
                #expect(try fresh.document(forHost: h) == documents[i], "\(h)")
            }
        }
        // one host's export alone restores the groups it names, rules included
        let one = try SQLiteStore(path: tempStorePath())
        _ = try one.importDocument(try Document.parse(json: exports[0]))
        #expect(try one.exportDocument(forHost: hosts[0]).jsonText() == exports[0])
        #expect(try one.group("admin") == st.group("admin"))
        #expect(try one.group("ops") == st.group("ops"))
    }

    /// Guarded prefixes (contract rule 9) are a host's: set by the verb or by importing the
    /// host's document, validated, delivered as a whole-host reload, and added to a store made
    /// by an earlier version (a new table on open, nothing else changed).
    @Test func guardedPrefixesAreStoredPerHost() throws {
        let path = tempStorePath()
        let st = try SQLiteStore(path: path)
        try populate(st)
        #expect(try st.setGuardedPrefixes(host: "hv1", ["tap"]) == [Delivery(host: "hv1", refresh: .host)])
        #expect(try st.document(forHost: "hv1").guardedPrefixes == ["tap"])
        #expect(try st.document(forHost: "hv2").guardedPrefixes == [])
        #expect(throws: StoreError.self) { try st.setGuardedPrefixes(host: "hv1", ["tap+"]) }
        #expect(throws: StoreError.self) { try st.setGuardedPrefixes(host: "hv1", ["lo"]) }
        #expect(throws: StoreError.self) { try st.setGuardedPrefixes(host: "bad host", ["tap"]) }
        #expect(try st.document(forHost: "hv1").guardedPrefixes == ["tap"])
        // A new host is registered by the verb.
        _ = try st.setGuardedPrefixes(host: "hv9", ["vnet"])
        #expect(try st.knowsHost("hv9"))
        // Importing a host's document replaces its prefixes (the document is its whole policy).
        var doc = try st.exportDocument(forHost: "hv1")
        doc.guardedPrefixes = []
        _ = try st.importDocument(doc)
        #expect(try st.document(forHost: "hv1").guardedPrefixes == [])
        // A store from before the table existed gains it when opened, by the daemon too.
        try sqlite3(path, "DROP TABLE host_guards;")
        let reopened = try SQLiteStore(path: path, create: false)
        #expect(try reopened.document(forHost: "hv1").guardedPrefixes == [])
        _ = try reopened.setGuardedPrefixes(host: "hv1", ["tap"])
        // A corrupted prefix makes the document invalid; it is never dropped.
        try sqlite3(path, "UPDATE host_guards SET prefix = 'ta+p' WHERE host = 'hv1';")
        #expect(throws: StoreError.self) { try reopened.document(forHost: "hv1") }
    }
}
