package main

import (
	"github.com/imgtool/imgtool/internal/registry"
	"github.com/spf13/pflag"
)

// registryFlags are the options of every command that talks to a
// registry (image pull/push, rootfs mount and store unpack of docker://
// references), spelt as skopeo spells them.
type registryFlags struct {
	tlsVerify *bool
	creds     *string
	authfile  *string
	jobs      *int
}

func addRegistryFlags(fs *pflag.FlagSet) *registryFlags {
	f := addRegistryAuthFlags(fs)
	f.jobs = fs.Int("jobs", registry.DefaultJobs, "blobs to transfer at once")
	return f
}

// addRegistryAuthFlags adds the registry flags but --jobs (which stays
// DefaultJobs), for commands that only read from a registry by the way.
func addRegistryAuthFlags(fs *pflag.FlagSet) *registryFlags {
	jobs := registry.DefaultJobs
	return &registryFlags{
		jobs:      &jobs,
		tlsVerify: fs.Bool("tls-verify", true, "require HTTPS with a verified certificate (false: also plain HTTP and unverified TLS, for this command only; loopback registries may always use plain HTTP)"),
		creds:     fs.String("creds", "", "`USER[:PASS]` for the registry (before any credential file)"),
		authfile:  fs.String("authfile", "", "credential `FILE` (auth.json or Docker config.json) to read instead of $REGISTRY_AUTH_FILE, ${XDG_RUNTIME_DIR}/containers/auth.json, ~/.config/containers/auth.json and ~/.docker/config.json"),
	}
}

func (f *registryFlags) options() (registry.Options, error) {
	if *f.jobs < 1 {
		return registry.Options{}, usagef("--jobs must be at least 1, not %d", *f.jobs)
	}
	return registry.Options{Insecure: !*f.tlsVerify, Creds: *f.creds, AuthFile: *f.authfile, Jobs: *f.jobs}, nil
}
