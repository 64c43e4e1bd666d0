import Foundation
import RampartSystem
@testable import RampartEC2
import RampartCoreTestSupport
import Testing

/// The form parser, SigV4 and the key file, without a server.
@Suite("EC2 protocol: forms, SigV4, key file") struct EC2ProtocolTests {
    func form(_ s: String) throws(EC2Error) -> Form { try Form(encoded: Array(s.utf8)) }

    @Test func formDecodesAndListsAreOneBased() throws {
        let f = try form("Action=DescribeSecurityGroups&GroupId.1=sg-1&GroupId.2=sg%2D2&Filter.1.Name=group-name&Filter.1.Value.1=a+b&Filter.1.Value.2=%C3%A9")
        #expect(try f.strings("GroupId") == ["sg-1", "sg-2"])
        #expect(try f.indices("Filter") == [1])
        #expect(try f.strings("Filter.1.Value") == ["a b", "é"])
        #expect(f.unread == ["Action", "Filter.1.Name"])
        #expect(try f.strings("Absent").isEmpty)
    }

    @Test func formRefusesWhatIsAmbiguous() throws {
        func code(_ s: String, _ body: (Form) throws(EC2Error) -> Void = { _ in }) -> String? {
            do { try body(try form(s)); return nil } catch { return error.code }
        }
        #expect(code("A=1&A=2") == "InvalidParameterValue")                        // a name twice
        #expect(code("A=%zz") == "InvalidParameterValue")                          // malformed escape
        #expect(code("A=%C3") == "InvalidParameterValue")                          // invalid UTF-8
        #expect(code("G.1=a&G.3=b") { f throws(EC2Error) in _ = try f.strings("G") } == "InvalidParameterValue")   // gap
        #expect(code("G.2=a") { f throws(EC2Error) in _ = try f.strings("G") } == "InvalidParameterValue")         // no 1
        #expect(code("G.01=a") { f throws(EC2Error) in _ = try f.strings("G") } == "InvalidParameterValue")        // leading zero
        #expect(code("G.1=a&G.x=b") { f throws(EC2Error) in _ = try f.strings("G") } == "InvalidParameterValue")   // not a number
        #expect(code("G.1001=a") { f throws(EC2Error) in _ = try f.indices("G") } == "InvalidParameterValue")      // too many
        #expect(code("P.1.Key=a") { f throws(EC2Error) in _ = try f.strings("P") } == "MissingParameter")          // P.1 itself missing
        #expect(code("N=12x") { f throws(EC2Error) in _ = try f.int("N") } == "InvalidParameterValue")
        #expect(code("B=yes") { f throws(EC2Error) in _ = try f.bool("B") } == "InvalidParameterValue")
        let many = (0...Form.maxParameters).map { "p\($0)=1" }.joined(separator: "&")
        #expect(code(many) == "InvalidParameterValue")
    }

    /// AWS's published SigV4 test suite, `get-vanilla`.
    @Test func sigV4GetVanilla() throws {
        let canonical = try SigV4.canonicalRequest(
            method: "GET", path: "/", query: "", headers: [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")],
            signedHeaders: ["host", "x-amz-date"], payloadHash: SigV4.sha256Hex([UInt8]()))
        #expect(canonical == """
            GET
            /

            host:example.amazonaws.com
            x-amz-date:20150830T123600Z

            host;x-amz-date
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            """)
        let sts = SigV4.stringToSign(amzDate: "20150830T123600Z", scope: "20150830/us-east-1/service/aws4_request", canonicalRequest: canonical)
        #expect(sts == """
            AWS4-HMAC-SHA256
            20150830T123600Z
            20150830/us-east-1/service/aws4_request
            bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63
            """)
        let key = SigV4.signingKey(secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", date: "20150830", region: "us-east-1", service: "service")
        #expect(SigV4.signature(key: key, stringToSign: sts) == "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")

        // The verifier accepts the vector's signature but for the service: this server is ec2.
        var v = Verifier(keys: ["AKIDEXAMPLE": AccessKey(id: "AKIDEXAMPLE", secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", account: "123456789012")])
        v.now = { Verifier.parseDate("20150830T123600Z")! }
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        let headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z"), ("Authorization", auth)]
        #expect(throws: EC2Error.self) { try v.verify(method: "GET", uri: "/", headers: headers, body: []) }
        #expect(try SigV4.Authorization(header: auth).signature == "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    }

    /// A request signed here for ec2 verifies; changing any signed part, the clock or the key does not.
    @Test func verifierChecksEverySignedPart() throws {
        let key = AccessKey(id: "AKIDTESTACCOUNTAAAAA", secret: "secretAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", account: "111111111111")
        var v = Verifier(keys: [key.id: key])
        let date = "20260101T000000Z"
        v.now = { Verifier.parseDate(date)! }
        let body = Array("Action=DescribeSecurityGroups&Version=2016-11-15".utf8)
        func sign(_ body: [UInt8], secret: String = key.secret, keyID: String = key.id) throws -> [(String, String)] {
            let base = [("Host", "127.0.0.1:8773"), ("X-Amz-Date", date), ("Content-Type", "application/x-www-form-urlencoded")]
            let signed = ["content-type", "host", "x-amz-date"]
            let canonical = try SigV4.canonicalRequest(method: "POST", path: "/", query: "", headers: base, signedHeaders: signed, payloadHash: SigV4.sha256Hex(body))
            let sts = SigV4.stringToSign(amzDate: date, scope: "20260101/eu-west-1/ec2/aws4_request", canonicalRequest: canonical)
            let sig = SigV4.signature(key: SigV4.signingKey(secret: secret, date: "20260101", region: "eu-west-1", service: "ec2"), stringToSign: sts)
            return base + [("Authorization", "AWS4-HMAC-SHA256 Credential=\(keyID)/20260101/eu-west-1/ec2/aws4_request, SignedHeaders=\(signed.joined(separator: ";")), Signature=\(sig)")]
        }
        #expect(try v.verify(method: "POST", uri: "/", headers: try sign(body), body: body) == Verifier.Caller(account: "111111111111", region: "eu-west-1"))
        func code(_ f: () throws -> Void) -> String? {
            do { try f(); return nil } catch let e as EC2Error { return e.code } catch { return "\(error)" }
        }
        #expect(code { _ = try v.verify(method: "POST", uri: "/", headers: try sign(body), body: body + Array("&x=1".utf8)) } == "SignatureDoesNotMatch")
        #expect(code { _ = try v.verify(method: "POST", uri: "/", headers: try sign(body, secret: "wrongwrongwrongwrong"), body: body) } == "SignatureDoesNotMatch")
        #expect(code { _ = try v.verify(method: "POST", uri: "/", headers: try sign(body, keyID: "AKIDUNKNOWNUNKNOWN00"), body: body) } == "AuthFailure")
        #expect(code { _ = try v.verify(method: "POST", uri: "/", headers: [("Host", "x")], body: body) } == "AuthFailure")
        v.now = { Verifier.parseDate(date)!.addingTimeInterval(600) }
        #expect(code { _ = try v.verify(method: "POST", uri: "/", headers: try sign(body), body: body) } == "RequestExpired")
    }

    @Test func keyFileFormatAndMode() throws {
        let keys = try KeyFile.parse("# comment\n\nAKIDTESTACCOUNTAAAAA  secretAAAAAAAAAAAAAAAA 111111111111\n")
        #expect(keys["AKIDTESTACCOUNTAAAAA"]?.account == "111111111111")
        #expect(throws: EC2Error.self) { try KeyFile.parse("AKIDTESTACCOUNTAAAAA secretAAAAAAAAAAAAAAAA 1111") }
        #expect(throws: EC2Error.self) { try KeyFile.parse("AKIDTESTACCOUNTAAAAA secretAAAAAAAAAAAAAAAA") }
        #expect(throws: EC2Error.self) { try KeyFile.parse("AKIDTESTACCOUNTAAAAA s1secretAAAAAAAAAAAAAA 111111111111\nAKIDTESTACCOUNTAAAAA s2secretAAAAAAAAAAAAAA 111111111111") }
        let path = NSTemporaryDirectory() + "keys-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: path) }
        _ = FileManager.default.createFile(atPath: path, contents: Data("AKIDTESTACCOUNTAAAAA secretAAAAAAAAAAAAAAAA 111111111111\n".utf8), attributes: [.posixPermissions: 0o644])
        #expect(throws: EC2Error.self) { try KeyFile.load(path) }
        chmod(path, 0o600)
        #expect(try KeyFile.load(path).count == 1)
        // Read the way it was checked (`SecretFile`): not through a link, not a FIFO (without
        // blocking on it), not another user's file even at 0600, not oversized.
        func refused(_ p: String, _ naming: String, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try KeyFile.load(p)
                Issue.record("accepted \(p)", sourceLocation: sourceLocation)
            } catch {
                #expect(error.message.contains(naming), "\(error.message)", sourceLocation: sourceLocation)
            }
        }
        let link = path + ".link", fifo = path + ".fifo", big = path + ".big"
        defer { for p in [link, fifo, big] { try? FileManager.default.removeItem(atPath: p) } }
        symlink(path, link)
        refused(link, "symbolic link")
        mkfifo(fifo, 0o600)
        refused(fifo, "not a regular file")
        _ = FileManager.default.createFile(atPath: big, contents: Data(count: SecretFile.maximumSize + 1), attributes: [.posixPermissions: 0o600])
        refused(big, "more than")
        if geteuid() == 0 {
            chown(path, 65534, 65534)
            refused(path, "owned by uid 65534")
            chown(path, 0, 0)
            #expect(try KeyFile.load(path).count == 1)
        }
    }

    /// XML text: the five special characters escaped, characters XML 1.0 cannot carry replaced,
    /// everything else (tabs, newlines, any Unicode) as given, on the fast path and the slow one.
    @Test func xmlEscape() {
        #expect(XMLWriter.escape("sg-0123 web_1 10.0.0.0/8 é☃") == "sg-0123 web_1 10.0.0.0/8 é☃")
        #expect(XMLWriter.escape(#"a&b<c>d"e'f"#) == "a&amp;b&lt;c&gt;d&quot;e&apos;f")
        #expect(XMLWriter.escape("tab\there\nnew\u{1}x") == "tab\there\nnew\u{FFFD}x")
        #expect(XMLWriter.escape("") == "")
    }

    @Test func filterPatterns() {
        #expect(EC2Service.matches("web*", "web-1"))
        #expect(EC2Service.matches("w?b", "wib"))
        #expect(!EC2Service.matches("w?b", "wb"))
        #expect(EC2Service.matches("a\\*", "a*"))
        #expect(!EC2Service.matches("a\\*", "ab"))
        #expect(EC2Service.matches("*", ""))
        #expect(EC2Service.matches("**a**", "xay"))
        #expect(!EC2Service.matches("a*b", "acbd"))
        #expect(EC2Service.matches("a*b*", "acbd"))
        #expect(EC2Service.matches("\\?x", "?x"))
        #expect(!EC2Service.matches("\\?x", "ax"))
    }

    /// Many stars against a long value: answered at once (a recursive backtracker took time
    /// exponential in the stars, and any account could send such a filter).
    @Test func filterPatternsTakeTimeLinearInBothLengths() {
        let value = String(repeating: "a", count: 255)
        let pattern = String(repeating: "*a", count: 30) + "*b"
        let start = ContinuousClock.now
        #expect(!EC2Service.matches(pattern, value))
        #expect(EC2Service.matches(String(repeating: "*a", count: 30) + "*", value))
        #expect(ContinuousClock.now - start < .milliseconds(200))
    }

    /// The same answers as the obvious recursive matcher, on random short patterns and values.
    @Test func filterPatternsAgreeWithTheDefinition() {
        func reference(_ p: [Character], _ v: [Character]) -> Bool {
            guard let c = p.first else { return v.isEmpty }
            switch c {
            case "*": return (0...v.count).contains { reference(Array(p.dropFirst()), Array(v.dropFirst($0))) }
            case "?": return !v.isEmpty && reference(Array(p.dropFirst()), Array(v.dropFirst()))
            case "\\" where p.count > 1: return v.first == p[1] && reference(Array(p.dropFirst(2)), Array(v.dropFirst()))
            default: return v.first == c && reference(Array(p.dropFirst()), Array(v.dropFirst()))
            }
        }
        var rng = SplitMix64(state: 7)
        let alphabet: [Character] = ["a", "b", "*", "?", "\\"]
        for _ in 0..<20_000 {
            let p = String((0..<Int.random(in: 0...6, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! })
            let v = String((0..<Int.random(in: 0...6, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! })
            #expect(EC2Service.matches(p, v) == reference(Array(p), Array(v)), "\(p) against \(v)")
        }
    }
}
