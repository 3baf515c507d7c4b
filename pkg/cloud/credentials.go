package cloud

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"
	"k8s.io/klog/v2"
)

// Credentials are an access key, with a security token for STS credentials.
// Their String and GoString forms never show the secret or the token.
type Credentials struct {
	AccessKeyID, AccessKeySecret, SecurityToken string
	// Expiration is set for temporary credentials.
	Expiration time.Time
}

// String shows only a prefix of the key ID.
func (c Credentials) String() string {
	id := c.AccessKeyID
	if len(id) > 4 {
		id = id[:4] + "****"
	}
	return fmt.Sprintf("Credentials{AccessKeyID:%s, sts:%v}", id, c.SecurityToken != "")
}

// GoString is String, so %#v cannot leak either.
func (c Credentials) GoString() string { return c.String() }

// sdkCredential is the SDK's own credential type for c.
func (c Credentials) sdkCredential() auth.Credential {
	if c.SecurityToken != "" {
		return credentials.NewStsTokenCredential(c.AccessKeyID, c.AccessKeySecret, c.SecurityToken)
	}
	return credentials.NewAccessKeyCredential(c.AccessKeyID, c.AccessKeySecret)
}

// CredentialProvider yields current credentials.
type CredentialProvider interface {
	Get(ctx context.Context) (Credentials, error)
	// Mode names where the credentials come from, for logs.
	Mode() string
}

// Environment variable names, the conventional ones first, then the older
// ones of the LocalVolume provisioner's DaemonSet.
var (
	envKeyID  = []string{"ALIBABA_CLOUD_ACCESS_KEY_ID", "ACCESS_KEY_ID"}
	envSecret = []string{"ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ACCESS_KEY_SECRET"}
	envToken  = []string{"ALIBABA_CLOUD_SECURITY_TOKEN", "SECURITY_TOKEN"}
)

// CredentialConfig says where credentials may come from.
type CredentialConfig struct {
	// Getenv reads the environment (os.Getenv when nil).
	Getenv func(string) string
	// File is a credentials file or directory mounted from a Secret; "" for none.
	File string
	// RAMRole names the instance's RAM role; "" discovers it.
	RAMRole string
	// Metadata is the metadata server client, for the RAM role.
	Metadata *Metadata
	// RefreshBefore renews temporary credentials this long before they expire.
	RefreshBefore time.Duration
}

// NewCredentialProvider picks the first source that is configured: an access
// key (with an STS token if one is set) from the environment, then the
// credentials file, then the instance's RAM role. The choice is logged; no
// secret is.
func NewCredentialProvider(cfg CredentialConfig) (CredentialProvider, error) {
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.RefreshBefore == 0 {
		cfg.RefreshBefore = 5 * time.Minute
	}
	var p CredentialProvider
	id, secret, token := firstEnv(cfg.Getenv, envKeyID), firstEnv(cfg.Getenv, envSecret), firstEnv(cfg.Getenv, envToken)
	switch {
	case id != "" || secret != "":
		if id == "" || secret == "" {
			return nil, errors.New("credentials: an access key ID and secret must be set together in the environment")
		}
		mode := "access key from environment"
		if token != "" {
			mode = "STS token from environment"
		}
		p = static{Credentials{AccessKeyID: id, AccessKeySecret: secret, SecurityToken: token}, mode}
	case cfg.File != "":
		fp := &fileProvider{path: cfg.File}
		if _, err := fp.Get(context.Background()); err != nil {
			return nil, err
		}
		p = fp
	default:
		if cfg.Metadata == nil {
			return nil, errors.New("credentials: none in the environment or a file, and no metadata server for a RAM role")
		}
		p = &roleProvider{md: cfg.Metadata, role: cfg.RAMRole, refreshBefore: cfg.RefreshBefore}
	}
	klog.InfoS("Cloud credentials", "mode", p.Mode())
	return p, nil
}

func firstEnv(getenv func(string) string, names []string) string {
	for _, n := range names {
		if v := strings.TrimSpace(getenv(n)); v != "" {
			return v
		}
	}
	return ""
}

type static struct {
	c    Credentials
	mode string
}

func (s static) Get(context.Context) (Credentials, error) { return s.c, nil }
func (s static) Mode() string                             { return s.mode }

// fileProvider reads a credentials file, or a directory with one file per
// key as a Secret volume has, and reads it again whenever it changes.
type fileProvider struct {
	path string

	mu      sync.Mutex
	stamp   string
	current Credentials
}

func (f *fileProvider) Mode() string { return "credentials file " + f.path }

// Get returns the file's credentials, re-reading them after a change.
func (f *fileProvider) Get(context.Context) (Credentials, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	stamp, err := changeStamp(f.path)
	if err != nil {
		return Credentials{}, fmt.Errorf("credentials file: %w", err)
	}
	if stamp == f.stamp {
		return f.current, nil
	}
	values, err := readKeyValues(f.path)
	if err != nil {
		return Credentials{}, fmt.Errorf("credentials file %s: %w", f.path, err)
	}
	c := Credentials{AccessKeyID: firstEnv(lookup(values), envKeyID), AccessKeySecret: firstEnv(lookup(values), envSecret), SecurityToken: firstEnv(lookup(values), envToken)}
	if c.AccessKeyID == "" || c.AccessKeySecret == "" {
		return Credentials{}, fmt.Errorf("credentials file %s: needs %s and %s", f.path, envKeyID[0], envSecret[0])
	}
	if f.stamp != "" {
		klog.InfoS("Credentials file changed, reloaded", "path", f.path)
	}
	f.stamp, f.current = stamp, c
	return c, nil
}

// lookup reads keys case-insensitively, so a Secret's access_key_id works as
// well as ALIBABA_CLOUD_ACCESS_KEY_ID.
func lookup(values map[string]string) func(string) string {
	return func(k string) string {
		if v, ok := values[k]; ok {
			return v
		}
		return values[strings.ToLower(strings.TrimPrefix(k, "ALIBABA_CLOUD_"))]
	}
}

// changeStamp changes whenever the file, or any file of the directory, does.
// A Secret volume swaps a symlink, so the targets are followed.
func changeStamp(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return fmt.Sprint(fi.ModTime().UnixNano(), fi.Size()), nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, e := range entries {
		if fi, err := os.Stat(filepath.Join(path, e.Name())); err == nil && !fi.IsDir() {
			fmt.Fprint(&b, e.Name(), fi.ModTime().UnixNano(), fi.Size(), ";")
		}
	}
	return b.String(), nil
}

// readKeyValues reads KEY=value lines from a file, or one value per file
// from a directory (file name = key).
func readKeyValues(path string) (map[string]string, error) {
	out := map[string]string{}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(path, e.Name()))
			if err == nil {
				out[e.Name()] = strings.TrimSpace(string(b))
			}
		}
		return out, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, errors.New("lines must be KEY=value")
		}
		out[strings.TrimSpace(strings.TrimPrefix(k, "export "))] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	return out, sc.Err()
}

// roleProvider serves the RAM role's temporary credentials from the metadata
// server, renewing them before they expire.
type roleProvider struct {
	md            *Metadata
	role          string
	refreshBefore time.Duration

	mu      sync.Mutex
	current Credentials
}

func (r *roleProvider) Mode() string {
	if r.role != "" {
		return "RAM role " + r.role + " from instance metadata"
	}
	return "RAM role from instance metadata"
}

// Get returns cached credentials until refreshBefore their expiry.
func (r *roleProvider) Get(ctx context.Context) (Credentials, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current.AccessKeyID != "" && time.Until(r.current.Expiration) > r.refreshBefore {
		return r.current, nil
	}
	if r.role == "" {
		role, err := r.md.RoleName(ctx)
		if err != nil {
			return Credentials{}, err
		}
		r.role = role
		klog.InfoS("Cloud credentials", "mode", r.Mode())
	}
	c, err := r.md.RoleCredentials(ctx, r.role)
	if err != nil {
		return Credentials{}, err
	}
	klog.V(2).InfoS("RAM role credentials renewed", "role", r.role, "expiration", c.Expiration)
	r.current = c
	return c, nil
}
