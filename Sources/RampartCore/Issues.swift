/// One reason a document (or an event's input) is invalid: a JSON path and what is wrong there.
public struct ValidationIssue: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// JSON path, e.g. `groups.web.rules[2].ports` (empty for the document itself).
    public var path: String
    /// What is wrong there.
    public var reason: String

    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    /// `path: reason`, the form printed to operators.
    public var description: String { path.isEmpty ? reason : "\(path): \(reason)" }

    public static func < (a: Self, b: Self) -> Bool { (a.path, a.reason) < (b.path, b.reason) }
}

/// A rejected document: every issue found, sorted by path, so one round trip fixes them all.
public struct DocumentError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Every issue, sorted by path.
    public var issues: [ValidationIssue]

    public init(_ issues: [ValidationIssue]) { self.issues = issues.sorted() }

    /// One issue per line.
    public var description: String {
        "invalid document (\(issues.count) error\(issues.count == 1 ? "" : "s")):\n"
            + issues.map { "  " + $0.description }.joined(separator: "\n")
    }
}

/// Joins a JSON path and an object key. A key with a control character is quoted (escaped), so
/// that an error message stays one line and carries no escape sequence to a terminal or a log.
func joinPath(_ path: String, _ key: String) -> String {
    let k = key.unicodeScalars.contains(where: isControl) ? quoted(key) : key
    return path.isEmpty ? k : path + "." + k
}

/// C0 controls, DEL and C1 controls (0x80-0x9f; 0x9b is CSI, which starts a terminal escape).
func isControl(_ u: Unicode.Scalar) -> Bool { u.value < 0x20 || (0x7f...0x9f).contains(u.value) }
