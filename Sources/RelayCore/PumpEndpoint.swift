import NIOCore

/// One of the two connections a pump joins: its channel, the reader of its inbound bytes
/// and the writer of its outbound bytes.
///
/// This is the seam between a session and its data path: today both sides are NIO
/// channels; a splice(2) pump takes sockets the relay accepted and dialled itself.
public struct PumpEndpoint: Sendable {
    /// The underlying channel, closed by the pump on error.
    public let channel: any Channel
    /// The inbound bytes, starting with anything read past a handshake line.
    public let reader: InboundReader
    /// The outbound side; finishing it shuts down the socket's write side.
    public let writer: NIOAsyncChannelOutboundWriter<ByteBuffer>

    /// Bundles the parts of one connection.
    public init(channel: any Channel, reader: InboundReader, writer: NIOAsyncChannelOutboundWriter<ByteBuffer>) {
        self.channel = channel
        self.reader = reader
        self.writer = writer
    }
}
