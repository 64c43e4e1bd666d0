import RampartSystem

// `NetworkNamespace` lives in RampartSystem (the iptables backend and the harness need it
// without netlink); here it only learns to report its failures as a `NetlinkError`.

extension NetworkNamespace {
    /// `perform(_:)`, with the failure to enter or leave typed as this module's error.
    package func run<T>(_ body: () throws(NetlinkError) -> T) throws(NetlinkError) -> T {
        do {
            return try perform(body)
        } catch let error as NetlinkError {
            throw error
        } catch let error as NoSuchNamespaceError {
            throw .noSuchNamespace(error.name)
        } catch let error as SystemCallError {
            throw .systemCall(error.name, error.errno)
        } catch {
            throw .protocolError("\(error)")  // not reached: perform throws only the errors above
        }
    }
}
