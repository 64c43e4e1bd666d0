import Foundation

/// TCP and UDP echo listeners in any number of namespaces, served by one thread with poll().
/// TCP: every line received is recorded and written back. UDP: every datagram is recorded and
/// sent back to its sender. "Recorded" = the token (the line) → the peer address seen, which is
/// how a probe learns that its datagram arrived even when no reply can come back.
final class EchoServer: @unchecked Sendable {
    private struct Key: Hashable {
        var namespace: String, stream: Bool, address: String, port: UInt16
    }
    private enum Entry {
        case listener(stream: Bool)
        case connection(peer: String, buffer: [UInt8])
    }

    private let lock = NSLock()
    private var listeners: [Key: Int32] = [:]
    private var entries: [Int32: Entry] = [:]
    private var seen: [String: String] = [:]
    private var stopping = false
    private var started = false
    private var wake: (read: Int32, write: Int32) = (-1, -1)
    private let finished = DispatchSemaphore(value: 0)

    init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw HarnessError("pipe: \(errnoText(errno))") }
        for fd in fds { setNonBlockingCloseOnExec(fd) }
        wake = (fds[0], fds[1])
    }

    deinit {
        stop()
    }

    /// Makes sure an echo listener is bound to `address`:`port` in `namespace` (created and
    /// listening before this returns, so a following probe cannot race it).
    func ensureListener(namespace: String, stream: Bool, address: String, port: UInt16) throws {
        let canonical = canonicalAddress(address) ?? address
        let key = Key(namespace: namespace, stream: stream, address: canonical, port: port)
        lock.lock()
        let exists = listeners[key] != nil
        let isStopping = stopping
        lock.unlock()
        if exists { return }
        if isStopping { throw HarnessError("echo server stopped") }
        let sa = try SocketAddress(canonical, port: port)
        let fd = try makeSocket(in: namespace, family: sa.family, stream: stream)
        setOption(fd, SOL_SOCKET, SO_REUSEADDR)
        if sa.family == AF_INET6 { setOption(fd, 41, 26 /* IPV6_V6ONLY */) }
        var rc = sa.withPointer { bind(fd, $0, $1) }
        if rc == 0 && stream { rc = listen(fd, 128) }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw HarnessError("echo listener \(stream ? "tcp" : "udp") \(canonical) port \(port) in \(namespace): \(errnoText(e))")
        }
        lock.lock()
        if listeners[key] != nil {  // another thread won the race
            lock.unlock()
            close(fd)
            return
        }
        listeners[key] = fd
        entries[fd] = .listener(stream: stream)
        let startNow = !started
        started = true
        lock.unlock()
        if startNow {
            let thread = Thread { [self] in self.loop() }
            thread.name = "rampart-echo"
            thread.start()
        } else {
            poke()
        }
    }

    /// The peer address that sent `token`, if it arrived.
    func seenSource(of token: String) -> String? {
        lock.lock(); defer { lock.unlock() }
        return seen[token]
    }

    /// Stops the thread and closes every listener and connection. Idempotent.
    func stop() {
        lock.lock()
        let wasStarted = started && !stopping
        stopping = true
        lock.unlock()
        if wasStarted {
            poke()
            finished.wait()
        }
        lock.lock()
        for fd in entries.keys { close(fd) }
        entries.removeAll()
        listeners.removeAll()
        if wake.read >= 0 { close(wake.read); close(wake.write); wake = (-1, -1) }
        lock.unlock()
    }

    private func poke() {
        var b: UInt8 = 1
        _ = write(wake.write, &b, 1)
    }

    private func loop() {
        while true {
            lock.lock()
            if stopping { lock.unlock(); break }
            var fds = [pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
            for fd in entries.keys { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            lock.unlock()
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { if errno == EINTR { continue } else { break } }
            if fds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                while read(wake.read, &drain, drain.count) > 0 {}
            }
            lock.lock()
            for p in fds.dropFirst() where p.revents != 0 {
                guard let entry = entries[p.fd] else { continue }
                switch entry {
                case .listener(stream: true): acceptAll(p.fd)
                case .listener(stream: false): echoDatagrams(p.fd)
                case .connection(let peer, let buffer): serve(p.fd, peer: peer, buffer: buffer)
                }
            }
            lock.unlock()
        }
        finished.signal()
    }

    // Called with the lock held.
    private func acceptAll(_ fd: Int32) {
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let c = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    accept(fd, $0, &length)
                }
            }
            if c < 0 { return }
            setNonBlockingCloseOnExec(c)
            entries[c] = .connection(peer: SocketAddress.text(of: storage), buffer: [])
        }
    }

    private func echoDatagrams(_ fd: Int32) {
        var data = [UInt8](repeating: 0, count: 2048)
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let n = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &data, data.count, 0, $0, &length) }
            }
            if n < 0 { return }
            let token = String(decoding: data[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            seen[token] = SocketAddress.text(of: storage)
            _ = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, data, n, Int32(MSG_NOSIGNAL), $0, length) }
            }
        }
    }

    private func serve(_ fd: Int32, peer: String, buffer: [UInt8]) {
        var buffer = buffer
        var chunk = [UInt8](repeating: 0, count: 4096)
        var open = true
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n > 0 { buffer += chunk[0..<n]; continue }
            if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { open = false }
            break
        }
        while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
            let line = Array(buffer[..<newline])
            buffer.removeSubrange(...newline)
            seen[String(decoding: line, as: UTF8.self)] = peer
            _ = (line + [UInt8(ascii: "\n")]).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        if open {
            entries[fd] = .connection(peer: peer, buffer: buffer)
        } else {
            entries[fd] = nil
            close(fd)
        }
    }
}
