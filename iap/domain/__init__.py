"""Pure protocol and security logic: plain values in, plain values out, no IO."""
