import NIOCore

extension Channel {
    /// Makes the next close send a reset instead of a FIN (SO_LINGER {1, 0}), so the peer
    /// tears its side down at once; used when an operator kills a session.
    public func setResetOnClose() async {
        guard let provider = self as? any SocketOptionProvider else { return }
        try? await provider.setSoLinger(NIOLinger(l_onoff: 1, l_linger: 0)).get()
    }
}
