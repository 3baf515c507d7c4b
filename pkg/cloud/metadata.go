// Package cloud talks to Alibaba Cloud for the node: the ECS instance metadata
// server (who am I, which RAM role), credentials, and the ECS OpenAPI through
// alibaba-cloud-sdk-go (which local disks does this instance have).
package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// DefaultMetadataEndpoint is the ECS instance metadata server.
const DefaultMetadataEndpoint = "http://100.100.100.200"

const (
	tokenTTLHeader = "X-aliyun-ecs-metadata-token-ttl-seconds"
	tokenHeader    = "X-aliyun-ecs-metadata-token"
	tokenTTL       = 6 * time.Hour
	maxMetadata    = 64 << 10
)

// Instance is what the metadata server says about this instance.
type Instance struct {
	ID, Type, Region, Zone string
}

// Metadata reads the instance metadata server. It prefers the hardened token
// mode and falls back to plain GETs when the token call is refused. Instance
// answers are cached: the server is rate limited.
type Metadata struct {
	base   string
	client *http.Client

	mu        sync.Mutex
	token     string
	tokenExp  time.Time
	plainOnly bool
	instance  *Instance
}

// NewMetadata returns a client for the metadata server at endpoint
// (DefaultMetadataEndpoint when empty). Every request times out after 2s.
func NewMetadata(endpoint string) *Metadata {
	if endpoint == "" {
		endpoint = DefaultMetadataEndpoint
	}
	return &Metadata{base: strings.TrimSuffix(endpoint, "/"), client: &http.Client{Timeout: 2 * time.Second}}
}

// errStatus is an HTTP answer other than 200.
type errStatus struct {
	code int
	path string
}

func (e *errStatus) Error() string { return fmt.Sprintf("metadata %s: HTTP %d", e.path, e.code) }

// Get returns the text at latest/<path>.
func (m *Metadata) Get(ctx context.Context, path string) (string, error) {
	tok, err := m.tokenFor(ctx)
	if err != nil {
		return "", err
	}
	body, err := m.do(ctx, http.MethodGet, "/latest/"+path, tok)
	var se *errStatus
	if errors.As(err, &se) && se.code == http.StatusUnauthorized && tok != "" {
		m.mu.Lock()
		m.token = "" // expired early: fetch a new one once
		m.mu.Unlock()
		if tok, err = m.tokenFor(ctx); err != nil {
			return "", err
		}
		body, err = m.do(ctx, http.MethodGet, "/latest/"+path, tok)
	}
	return strings.TrimSpace(body), err
}

// tokenFor returns a valid session token, "" in plain mode.
func (m *Metadata) tokenFor(ctx context.Context) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.plainOnly {
		return "", nil
	}
	if m.token != "" && time.Now().Before(m.tokenExp) {
		return m.token, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, m.base+"/latest/api/token", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set(tokenTTLHeader, fmt.Sprint(int(tokenTTL.Seconds())))
	resp, err := m.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("metadata server %s unreachable: %w", m.base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxMetadata))
	if resp.StatusCode != http.StatusOK || len(b) == 0 {
		klog.InfoS("Metadata token refused, using plain mode", "status", resp.StatusCode)
		m.plainOnly = true
		return "", nil
	}
	m.token, m.tokenExp = strings.TrimSpace(string(b)), time.Now().Add(tokenTTL-time.Minute)
	return m.token, nil
}

func (m *Metadata) do(ctx context.Context, method, path, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, method, m.base+path, nil)
	if err != nil {
		return "", err
	}
	if token != "" {
		req.Header.Set(tokenHeader, token)
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("metadata server %s unreachable: %w", m.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadata))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", &errStatus{code: resp.StatusCode, path: path}
	}
	return string(b), nil
}

// Instance returns the instance's ID, type, region and zone, asking the
// server only until one answer has succeeded.
func (m *Metadata) Instance(ctx context.Context) (Instance, error) {
	m.mu.Lock()
	cached := m.instance
	m.mu.Unlock()
	if cached != nil {
		return *cached, nil
	}
	var in Instance
	for _, f := range []struct {
		dst  *string
		path string
	}{
		{&in.ID, "meta-data/instance-id"}, {&in.Type, "meta-data/instance/instance-type"},
		{&in.Region, "meta-data/region-id"}, {&in.Zone, "meta-data/zone-id"},
	} {
		v, err := m.Get(ctx, f.path)
		if err != nil {
			return Instance{}, err
		}
		if v == "" {
			return Instance{}, fmt.Errorf("metadata %s is empty", f.path)
		}
		*f.dst = v
	}
	m.mu.Lock()
	m.instance = &in
	m.mu.Unlock()
	return in, nil
}

// roleCredentials is the JSON the metadata server returns for a RAM role.
type roleCredentials struct {
	AccessKeyID     string `json:"AccessKeyId"`
	AccessKeySecret string `json:"AccessKeySecret"`
	SecurityToken   string `json:"SecurityToken"`
	Expiration      string `json:"Expiration"`
	Code            string `json:"Code"`
}

// RoleName discovers the RAM role attached to the instance.
func (m *Metadata) RoleName(ctx context.Context) (string, error) {
	v, err := m.Get(ctx, "meta-data/ram/security-credentials/")
	if err != nil {
		return "", fmt.Errorf("discovering the instance's RAM role: %w", err)
	}
	if v = strings.TrimSpace(strings.SplitN(v, "\n", 2)[0]); v == "" {
		return "", errors.New("the instance has no RAM role attached")
	}
	return v, nil
}

// RoleCredentials fetches the temporary credentials of a RAM role.
func (m *Metadata) RoleCredentials(ctx context.Context, role string) (Credentials, error) {
	v, err := m.Get(ctx, "meta-data/ram/security-credentials/"+role)
	if err != nil {
		return Credentials{}, fmt.Errorf("RAM role %s credentials: %w", role, err)
	}
	var rc roleCredentials
	if err := json.Unmarshal([]byte(v), &rc); err != nil {
		return Credentials{}, fmt.Errorf("RAM role %s credentials: malformed answer: %w", role, err)
	}
	if rc.Code != "" && rc.Code != "Success" {
		return Credentials{}, fmt.Errorf("RAM role %s credentials: code %q", role, rc.Code)
	}
	exp, err := time.Parse(time.RFC3339, rc.Expiration)
	if err != nil || rc.AccessKeyID == "" || rc.AccessKeySecret == "" || rc.SecurityToken == "" {
		return Credentials{}, fmt.Errorf("RAM role %s credentials: incomplete answer", role)
	}
	return Credentials{AccessKeyID: rc.AccessKeyID, AccessKeySecret: rc.AccessKeySecret, SecurityToken: rc.SecurityToken, Expiration: exp}, nil
}
