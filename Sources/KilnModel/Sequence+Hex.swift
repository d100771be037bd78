extension Sequence where Element == UInt8 {
    /// Lowercase hex, two digits a byte: how digests and signatures are written.
    public var hexString: String {
        var text = ""
        for byte in self {
            text.append(Character(Unicode.Scalar(Self.digits[Int(byte >> 4)])))
            text.append(Character(Unicode.Scalar(Self.digits[Int(byte & 0x0f)])))
        }
        return text
    }

    private static var digits: [UInt8] { Array("0123456789abcdef".utf8) }
}
