import NIOCore

extension Channel {
    /// Closes the channel abortively (SO_LINGER {1, 0}, then close): its peer gets a reset
    /// rather than a FIN, so a session torn down here (an error, an operator's kill, the end
    /// of a shutdown's drain) is torn down at the next hop too instead of lingering half-open.
    public func abort() {
        guard let provider = self as? any SocketOptionProvider else {
            self.close(promise: nil)
            return
        }
        provider.setSoLinger(NIOLinger(l_onoff: 1, l_linger: 0)).whenComplete { _ in self.close(promise: nil) }
    }
}
