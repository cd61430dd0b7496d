// Package vmimage ships VM disk chains (qcow2 images that build on each
// other: base -> +db -> +web) through OCI registries as ordinary OCI
// images with one uncompressed tar layer per chain level, base first.
//
// Because every level is its own layer, and the layer bytes are a pure
// function of the level's bytes (a fixed tar header, mtime 0), a registry
// stores each level once across every tag that uses it: pushing an
// update that adds a level moves only that level, and pulling it into a
// directory that holds the older chain fetches only that level.
//
// The format, exactly (shared with the lazy docker:// readers):
//
//   - The manifest is an OCI image manifest with an OCI image config
//     whose rootfs.diff_ids list the layers (uncompressed, so each diffID
//     is the layer digest). Nothing in it depends on time, so the same
//     chain always has the same manifest digest. The manifest annotation
//     org.imgtool.chain.top names the top level (the last layer).
//   - Each layer has media type application/vnd.oci.image.layer.v1.tar
//     and the annotations org.imgtool.level.name, .parent (absent on the
//     base), .virtual-size and .size (decimal bytes), and
//     org.opencontainers.image.title = disk/NAME.qcow2.
//   - The layer is one 512-byte ustar header for disk/NAME.qcow2 (mode
//     0440, owner 107:107 as KubeVirt expects, mtime 0), the qcow2 file,
//     zero padding to 512 bytes, and the 1024-byte end-of-archive: the
//     qcow2 starts at byte 512 of the blob, so it can be read by range.
//   - A non-base level's qcow2 names its backing file PARENT.qcow2 with
//     backing format qcow2; the base has no backing file.
//
// format.go holds the constants, the tar header writer and its strict
// reader, name validation and Plan, which turns a manifest into the
// validated list of levels. push.go and pull.go move chains between a
// directory and a registry.
package vmimage
