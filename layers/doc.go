// Package layers reads, writes and applies OCI image layers and keeps OCI
// image layouts.
//
// A layer is a tar stream, uncompressed or compressed with gzip or zstd
// (Compression, ParseMediaType), whose digest is its blob digest and whose
// uncompressed digest is its diffID (Descriptor).
//
//   - Apply extracts a layer onto a directory with the OCI flattening
//     semantics (".wh." whiteouts delete, ".wh..wh..opq" makes a directory
//     opaque), or in overlayfs lowerdir format (ApplyOptions.Overlay).
//     Extraction treats the blob as hostile: every path stays inside the
//     directory, and Limits bound sizes, entry counts and decoder memory.
//   - List walks the entries of a layer without extracting it.
//   - Create writes a layer from a directory, from the difference between
//     two directories (CreateOptions.Lower), or from an overlayfs upper
//     directory (CreateOptions.OverlayUpper).
//   - NewLayer and LayerFromFile adapt blobs to go-containerregistry's
//     v1.Layer.
//
// An OCI image layout (Layout: OpenLayout, InitLayout) holds blobs by
// digest and tagged images in its index. Build makes an image from layers,
// Resolve and Image read one back (the latter as a v1.Image), Unpack
// applies an image's layers to a directory, Verify recomputes every
// digest and size from the bytes, and Pull copies an image from a
// registry into a layout.
//
// Errors callers branch on are the sentinels in errors.go, matched with
// errors.Is.
package layers
