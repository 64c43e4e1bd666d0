import Foundation

/// The EC2 API's XML answers: elements written in order, text escaped.
public struct XMLWriter: Sendable {
    public static let namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"
    public private(set) var text = ""

    public init() {}

    public static func escape(_ s: String) -> String {
        // Most values (ids, names, CIDRs) need nothing: returned as they are, which halves the
        // cost of writing a large Describe. Bytes of multi-byte UTF-8 are all ≥ 0x80.
        if s.utf8.allSatisfy({ $0 >= 0x20 && $0 != UInt8(ascii: "&") && $0 != UInt8(ascii: "<") && $0 != UInt8(ascii: ">")
            && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "'") }) { return s }
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default:
                // Characters XML 1.0 cannot carry are written as U+FFFD.
                if c.value < 0x20 && c != "\t" && c != "\n" && c != "\r" { out += "\u{FFFD}" } else { out.unicodeScalars.append(c) }
            }
        }
        return out
    }

    /// `<name>value</name>`; nothing when `value` is nil.
    public mutating func leaf(_ name: String, _ value: String?) {
        guard let value else { return }
        text += "<\(name)>\(Self.escape(value))</\(name)>"
    }

    public mutating func leaf(_ name: String, _ value: Int?) { leaf(name, value.map(String.init)) }
    public mutating func leaf(_ name: String, _ value: Bool) { leaf(name, value ? "true" : "false") }

    public mutating func element(_ name: String, _ body: (inout XMLWriter) -> Void) {
        text += "<\(name)>"
        body(&self)
        text += "</\(name)>"
    }

    /// A list: `<name><item>…</item>…</name>`.
    public mutating func list<S: Sequence>(_ name: String, _ items: S, _ body: (inout XMLWriter, S.Element) -> Void) {
        element(name) { w in
            for x in items { w.element("item") { body(&$0, x) } }
        }
    }

    /// A tag set, sorted by key.
    public mutating func tagSet(_ tags: [String: String]) {
        list("tagSet", tags.sorted { $0.key < $1.key }) { w, t in
            w.leaf("key", t.key)
            w.leaf("value", t.value)
        }
    }

    /// A whole answer: `<ActionResponse xmlns=…><requestId>…</requestId>…</ActionResponse>`.
    public static func response(_ action: String, requestID: String, _ body: (inout XMLWriter) -> Void) -> String {
        var w = XMLWriter()
        w.text = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<\(action)Response xmlns=\"\(namespace)\">"
        w.leaf("requestId", requestID)
        body(&w)
        w.text += "</\(action)Response>"
        return w.text
    }

    /// An error answer, as EC2 writes it.
    public static func error(_ e: EC2Error, requestID: String) -> String {
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>\(escape(e.code))</Code><Message>\(escape(e.message))</Message></Error></Errors><RequestID>\(escape(requestID))</RequestID></Response>"
    }
}
