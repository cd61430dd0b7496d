package main

import (
	"context"
	"io"

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

// transferFlags are the flags the commands that move an image to or
// from a registry (image pull/push, pull, push, image disk) end with:
// the registry flags, -p and --output.
type transferFlags struct {
	rf       *registryFlags
	progress *bool
	output   *string
}

// addTransferFlags adds the registry flags, -p with the usage progress
// and --output; output is --output's usage ("" for the usual one).
func addTransferFlags(fs *pflag.FlagSet, progress, output string) transferFlags {
	var f transferFlags
	f.rf = addRegistryFlags(fs)
	f.progress = progressFlags(fs, progress)
	if output == "" {
		output = "output format: human or json"
	}
	f.output = fs.String("output", "human", output)
	return f
}

// parse parses args and checks that n arguments remain (want is the
// usage error otherwise, with a %d for the number given); it returns
// whether the output is JSON and the registry options of the flags.
func (f transferFlags) parse(fs *pflag.FlagSet, args []string, n int, want string) (json bool, ro registry.Options, err error) {
	if json, err = parseOutputArgs(fs, args, f.output, n, want); err != nil {
		return false, ro, err
	}
	ro, err = f.rf.options()
	return json, ro, err
}

// transfer runs op, the transfer itself, with one progress bar per blob
// on stderr (with -p) and a context that Ctrl-C cancels.
func transfer[T any](f transferFlags, stderr io.Writer, op func(context.Context, registry.ProgressFunc) (T, error)) (T, error) {
	update, finish := newBlobProgress(*f.progress, stderr)
	ctx, stop := interruptible()
	defer stop()
	res, err := op(ctx, update)
	finish()
	return res, err
}
