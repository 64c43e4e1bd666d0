import Foundation
import RampartStore

/// An error answered to the client: AWS's code, a message, and a 4xx status (a client error is
/// never 5xx: clients retry those).
public struct EC2Error: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: String
    public var message: String
    public var status: Int
    /// The store's serialization failure (PostgreSQL SQLSTATE 40001 or 40P01) this error was
    /// mapped from, if so: the transaction that met it is run again instead of answering it
    /// (`EC2Service.change`).
    var retryable: StoreError?

    public init(_ code: String, _ message: String, status: Int = 400) {
        self.code = code
        self.message = message
        self.status = status
    }

    public static func == (a: EC2Error, b: EC2Error) -> Bool {
        a.code == b.code && a.message == b.message && a.status == b.status
    }

    public var description: String { "\(code): \(message)" }

    public static func invalidParameter(_ message: String) -> EC2Error { EC2Error("InvalidParameterValue", message) }
    public static func missing(_ name: String) -> EC2Error {
        EC2Error("MissingParameter", "The request must contain the parameter \(name)")
    }
    public static func groupNotFound(_ id: String) -> EC2Error {
        EC2Error("InvalidGroup.NotFound", "The security group '\(id)' does not exist")
    }
    public static func malformedGroupID(_ id: String) -> EC2Error {
        EC2Error("InvalidGroupId.Malformed", "Invalid id: \"\(id)\" (expecting \"sg-...\")")
    }
    /// The dry run's answer: the request would have succeeded.
    public static let dryRun = EC2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.", status: 412)
    /// A failure of the server itself (the store): the one 5xx.
    public static func server(_ message: String) -> EC2Error { EC2Error("InternalError", message, status: 500) }
}
