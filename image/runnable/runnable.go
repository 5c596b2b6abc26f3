// Package runnable describes an image ready to run on a machine: what the
// image store (package image) hands a runtime (the OCI driver). It imports
// nothing, so that the runtimes' shims, which link the driver package,
// stay small.
package runnable

// Image is an image whose root filesystem is unpacked on the machine.
type Image struct {
	// Ref is the reference as asked.
	Ref string
	// Digest is the digest of the image's manifest ("sha256:..."; for a
	// multi-platform image, the manifest of this machine's platform).
	Digest string
	// Pinned is the image's repository at Digest ("repo@sha256:..."): the
	// same bytes wherever and whenever it is pulled.
	Pinned string
	// ChainID identifies the image's layers ("sha256:..."); the root
	// filesystem is keyed by it.
	ChainID string
	// Rootfs is the image's unpacked root filesystem. It is shared by
	// every instance of the image: never write to it.
	Rootfs string
	// Config is what the image says about running it.
	Config Config
	// Size is the sum of the image's compressed layers, in bytes.
	Size int64
	// Pulled says the image was fetched or unpacked by the call that
	// returned it (false: it was already on the machine).
	Pulled bool
}

// Config is the part of an image's configuration a runtime uses.
type Config struct {
	Entrypoint []string
	Cmd        []string
	// Env holds KEY=VALUE entries.
	Env        []string
	WorkingDir string
	// User is "user", "uid", "user:group" or "uid:gid", or empty (root).
	User string
}
