package registry

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/imgtool/imgtool/internal/jsonfile"
)

// maxAuthFile caps a credential file read into memory.
const maxAuthFile = 4 << 20

// Keychain finds credentials for a registry the way skopeo and podman do,
// plus go-containerregistry's default keychain:
//
//  1. Options.Creds (--creds), for every registry;
//  2. Options.AuthFile (--authfile) when set, and then nothing else; else
//  3. $REGISTRY_AUTH_FILE,
//  4. ${XDG_RUNTIME_DIR}/containers/auth.json,
//  5. ${XDG_CONFIG_HOME:-~/.config}/containers/auth.json,
//  6. $DOCKER_CONFIG/config.json, else ~/.docker/config.json,
//  7. authn.DefaultKeychain (which adds Docker credential helpers).
//
// The first file holding an entry for the registry wins. authn's default
// keychain reads only one of files 3 to 6 (the Docker config when it
// exists, and then ignores the podman files), hence the list here.
//
// A Keychain remembers where it found each registry's credentials, so
// that errors can say which files were tried. It is safe for concurrent
// use.
type Keychain struct {
	creds    *authn.Basic
	files    []string // candidate files, in order
	fallback authn.Keychain

	mu     sync.Mutex
	source map[string]string // registry -> where its credentials came from
}

var _ authn.Keychain = (*Keychain)(nil)

// NewKeychain returns the keychain of o (see Keychain for the order).
func NewKeychain(o Options) *Keychain {
	getenv := o.Env
	if getenv == nil {
		getenv = os.Getenv
	}
	k := &Keychain{source: map[string]string{}}
	if o.Creds != "" {
		u, p, _ := strings.Cut(o.Creds, ":")
		k.creds = &authn.Basic{Username: u, Password: p}
	}
	if o.AuthFile != "" {
		k.files = []string{o.AuthFile}
		return k
	}
	add := func(p string) {
		if p != "" {
			k.files = append(k.files, filepath.Clean(p))
		}
	}
	add(getenv("REGISTRY_AUTH_FILE"))
	if d := getenv("XDG_RUNTIME_DIR"); d != "" {
		add(filepath.Join(d, "containers", "auth.json"))
	}
	home := getenv("HOME")
	if cfg := getenv("XDG_CONFIG_HOME"); cfg != "" {
		add(filepath.Join(cfg, "containers", "auth.json"))
	} else if home != "" {
		add(filepath.Join(home, ".config", "containers", "auth.json"))
	}
	if d := getenv("DOCKER_CONFIG"); d != "" {
		add(filepath.Join(d, "config.json"))
	} else if home != "" {
		add(filepath.Join(home, ".docker", "config.json"))
	}
	if o.Env == nil {
		k.fallback = authn.DefaultKeychain
	}
	return k
}

// Sources lists where credentials are looked for, in order: "--creds"
// when set, then the credential files.
func (k *Keychain) Sources() []string {
	var s []string
	if k.creds != nil {
		s = append(s, "--creds")
	}
	return append(s, k.files...)
}

// SourceFor returns where the credentials used for registry came from
// ("--creds" or a file), or "" when none were found (anonymous).
func (k *Keychain) SourceFor(registry string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.source[registry]
}

// Resolve implements authn.Keychain.
func (k *Keychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	reg := res.RegistryStr()
	a, src, err := k.resolve(res)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	k.source[reg] = src
	k.mu.Unlock()
	return a, nil
}

func (k *Keychain) resolve(res authn.Resource) (authn.Authenticator, string, error) {
	if k.creds != nil {
		return k.creds, "--creds", nil
	}
	for _, f := range k.files {
		cfg, err := lookupAuthFile(f, res)
		if err != nil {
			return nil, "", err
		}
		if cfg != nil {
			return authn.FromConfig(*cfg), f, nil
		}
	}
	if k.fallback != nil {
		a, err := k.fallback.Resolve(res)
		if err == nil && a != authn.Anonymous {
			return a, "docker credential helper", nil
		}
	}
	return authn.Anonymous, "", nil
}

// authFile is the part of auth.json and Docker's config.json read here.
type authFile struct {
	Auths map[string]authEntry `json:"auths"`
}

type authEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// lookupAuthFile returns the entry of file for res, nil when the file is
// missing or has none. Keys are matched as containers-auth.json(5) says:
// the most specific of host/ns/repo, host/ns, host; a key may carry a
// scheme and a /v1/ or /v2/ suffix (Docker's style).
func lookupAuthFile(file string, res authn.Resource) (*authn.AuthConfig, error) {
	b, err := jsonfile.ReadCapped(file, maxAuthFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		// err names file.
		return nil, fmt.Errorf("registry: credential file: %w", err)
	}
	var af authFile
	if err := json.Unmarshal(b, &af); err != nil {
		return nil, fmt.Errorf("registry: credential file %s: %v", file, err)
	}
	entries := make(map[string]authEntry, len(af.Auths))
	for key, e := range af.Auths {
		entries[normAuthKey(key)] = e
	}
	for _, key := range authKeys(res) {
		e, ok := entries[key]
		if !ok {
			continue
		}
		cfg := authn.AuthConfig{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken, RegistryToken: e.RegistryToken}
		if e.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("registry: credential file %s: entry %q: auth is not base64: %v", file, key, err)
			}
			u, p, ok := strings.Cut(string(dec), ":")
			if !ok {
				return nil, fmt.Errorf("registry: credential file %s: entry %q: auth is not USER:PASS", file, key)
			}
			cfg.Username, cfg.Password = u, p
		}
		if cfg == (authn.AuthConfig{}) {
			continue
		}
		return &cfg, nil
	}
	return nil, nil
}

// authKeys lists the keys to try for res, most specific first.
func authKeys(res authn.Resource) []string {
	reg := res.RegistryStr()
	var keys []string
	if repo, ok := res.(name.Repository); ok {
		parts := strings.Split(repo.RepositoryStr(), "/")
		for i := len(parts); i > 0; i-- {
			keys = append(keys, reg+"/"+strings.Join(parts[:i], "/"))
		}
	}
	keys = append(keys, reg)
	if reg == name.DefaultRegistry {
		keys = append(keys, "docker.io", "registry-1.docker.io")
	}
	return keys
}

func normAuthKey(k string) string {
	k = strings.TrimPrefix(k, "https://")
	k = strings.TrimPrefix(k, "http://")
	k = strings.TrimSuffix(k, "/")
	k = strings.TrimSuffix(k, "/v1")
	k = strings.TrimSuffix(k, "/v2")
	return k
}
