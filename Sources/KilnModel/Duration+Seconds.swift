extension Duration {
    /// Seconds as a Double, for timings in records and progress lines.
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
