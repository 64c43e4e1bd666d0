import Foundation
import RampartCore
import RampartEC2
import RampartStore
import Testing

/// The executables built beside the test bundle.
func builtExecutable(_ name: String) -> String {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let candidate = dir.appendingPathComponent(name).path
    if FileManager.default.fileExists(atPath: candidate) { return candidate }
    return dir.deletingLastPathComponent().appendingPathComponent(name).path
}

struct RunResult {
    var status: Int32
    var out: String
    var err: String
}

/// Runs a program to completion with `environment` added to ours.
func run(_ program: String, _ args: [String], environment: [String: String] = [:], input: String? = nil) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [program] + args
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let out = Pipe(), err = Pipe(), inp = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = inp
    try p.run()
    if let input { inp.fileHandleForWriting.write(Data(input.utf8)) }
    try inp.fileHandleForWriting.close()
    // Read both pipes concurrently so neither fills up.
    let errData = LockedData()
    let t = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
    t.start()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    while !errData.done { usleep(1000) }
    return RunResult(status: p.terminationStatus, out: String(decoding: o, as: UTF8.self), err: String(decoding: errData.data, as: UTF8.self))
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var value = Data()
    private var finished = false
    func set(_ d: Data) { lock.withLock { value = d; finished = true } }
    var done: Bool { lock.withLock { finished } }
    var data: Data { lock.withLock { value } }
}

/// Two accounts' keys.
let keyA = AccessKey(id: "AKIDTESTACCOUNTAAAAA", secret: "secretAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", account: "111111111111")
let keyB = AccessKey(id: "AKIDTESTACCOUNTBBBBB", secret: "secretBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", account: "222222222222")

/// A `rampart-api` on a free port with a fresh SQLite store and key file; stopped on deinit.
final class APIServerFixture {
    let dir: String
    let storePath: String
    let keyPath: String
    let process: Process
    let port: Int
    var endpoint: String { "http://127.0.0.1:\(port)" }
    /// Where a (fake) daemon for host hv1 may listen: the server delivers there.
    var daemonSocket: String { dir + "/hv1.sock" }

    /// `store`: a `postgres://` URL, or nil for a fresh SQLite file. `noAuth`: started with
    /// `--no-auth` (its standard error goes to `errorLog`).
    /// `arguments`: more options for rampart-api.
    init(store: String? = nil, noAuth: Bool = false, arguments: [String] = []) throws {
        dir = NSTemporaryDirectory() + "ec2api-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        storePath = store ?? dir + "/store/rampart.db"
        keyPath = dir + "/keys"
        let keys = "# test keys\n\(keyA.id) \(keyA.secret) \(keyA.account)\n\(keyB.id) \(keyB.secret) \(keyB.account)\n"
        _ = FileManager.default.createFile(atPath: keyPath, contents: Data(keys.utf8), attributes: [.posixPermissions: 0o600])
        process = Process()
        process.executableURL = URL(fileURLWithPath: builtExecutable("rampart-api"))
        process.arguments = ["--store", storePath, "--listen", "127.0.0.1:0", "--socket", dir + "/hv1.sock"]
            + (noAuth ? ["--no-auth"] : ["--keys", keyPath]) + arguments
        let out = Pipe()
        process.standardOutput = out
        _ = FileManager.default.createFile(atPath: dir + "/stderr", contents: nil)
        process.standardError = FileHandle(forWritingAtPath: dir + "/stderr")
        try process.run()
        // The first line names the port bound.
        var line = Data()
        let h = out.fileHandleForReading
        while !line.contains(UInt8(ascii: "\n")) {
            let d = h.availableData
            if d.isEmpty { break }
            line += d
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let r = text.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression),
              let p = Int(text[r].split(separator: ":").last!) else {
            kill(process.processIdentifier, SIGKILL)
            throw FixtureError(description: "rampart-api did not start: \(text)")
        }
        port = p
    }

    /// What the server wrote to standard error.
    var errorLog: String { (try? String(contentsOfFile: dir + "/stderr", encoding: .utf8)) ?? "" }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// The environment for `aws` and boto3 as `key`.
    func environment(_ key: AccessKey = keyA) -> [String: String] {
        ["AWS_ACCESS_KEY_ID": key.id, "AWS_SECRET_ACCESS_KEY": key.secret, "AWS_CONFIG_FILE": "/dev/null",
         "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard",
         "AWS_DEFAULT_REGION": "us-east-1", "ENDPOINT": endpoint]
    }

    /// `aws ec2 ARGS` as `key`: its exit status, parsed JSON output and standard error.
    func aws(_ args: [String], as key: AccessKey = keyA, region: String = "us-east-1") throws -> (status: Int32, json: [String: Any], err: String) {
        let r = try run("aws", ["ec2"] + args + ["--endpoint-url", endpoint, "--region", region, "--output", "json"], environment: environment(key))
        let json = (try? JSONSerialization.jsonObject(with: Data(r.out.utf8))) as? [String: Any] ?? [:]
        return (r.status, json, r.err)
    }

    /// `aws ec2 ARGS` that must succeed.
    func awsOK(_ args: [String], as key: AccessKey = keyA, region: String = "us-east-1",
               sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let r = try aws(args, as: key, region: region)
        #expect(r.status == 0, "aws \(args.joined(separator: " ")): \(r.err)", sourceLocation: sourceLocation)
        return r.json
    }

    /// `aws ec2 ARGS` that must fail with `code`.
    func awsFails(_ args: [String], code: String, as key: AccessKey = keyA, region: String = "us-east-1",
                  sourceLocation: SourceLocation = #_sourceLocation) throws {
        let r = try aws(args, as: key, region: region)
        #expect(r.status != 0, "aws \(args.joined(separator: " ")) succeeded", sourceLocation: sourceLocation)
        #expect(r.err.contains("(\(code))"), "aws \(args.joined(separator: " ")): expected \(code), got: \(r.err)", sourceLocation: sourceLocation)
    }

    /// Runs a Python script (boto3/botocore) with the environment of `key`; its standard output
    /// is a JSON object.
    func python(_ script: String, as key: AccessKey = keyA, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let r = try run("python3", ["-"], environment: environment(key), input: script)
        #expect(r.status == 0, "python: \(r.err)", sourceLocation: sourceLocation)
        return (try? JSONSerialization.jsonObject(with: Data(r.out.utf8))) as? [String: Any] ?? ["unparsed": r.out]
    }

    /// The store, opened beside the server.
    func store() throws -> SQLStore { try StoreAddress(storePath).openForWriting() }

    /// Everything the API keeps, for "nothing changed" checks: each account's groups.
    func snapshot() throws -> [[EC2Group]] {
        let st = try store()
        return try st.ec2Read { tx in
            [try tx.groups(account: keyA.account, region: "us-east-1"), try tx.groups(account: keyB.account, region: "us-east-1")]
        }
    }

    /// Account A's instances (live and terminated within the hour), for "nothing changed" checks.
    func instanceSnapshot() throws -> [EC2Instance] {
        try store().ec2Read { tx in
            try tx.instances(account: keyA.account, region: "us-east-1")
                + tx.terminatedInstances(account: keyA.account, region: "us-east-1", since: Int64(Date().timeIntervalSince1970) - 3600)
        }
    }
}

struct FixtureError: Error, CustomStringConvertible { var description: String }

/// Python prelude: a boto3 client for the test server, and a helper returning an error's code.
let pythonPrelude = """
import json, os, sys, boto3, botocore
from botocore.config import Config
from botocore.exceptions import ClientError
ec2 = boto3.client('ec2', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1', config=Config(retries={'max_attempts': 1, 'mode': 'standard'}))
def code(f, *a, **k):
    try:
        f(*a, **k)
        return 'OK'
    except ClientError as e:
        return e.response['Error']['Code']

"""
