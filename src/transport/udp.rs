//! STUB
pub struct UdpSide;
impl UdpSide {
    pub fn send(&self, _d: std::net::SocketAddr, _b: bytes::Bytes) -> Result<(), super::SendError> {
        todo!()
    }
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        todo!()
    }
}
