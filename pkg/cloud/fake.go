package cloud

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fake is a fake ECS for tests and demos: a metadata server and an OpenAPI
// endpoint on loopback httptest servers. The OpenAPI side dispatches on the
// Action parameter and ignores signatures, so the real SDK client can talk to
// it. Faults can be injected per call. Close stops both servers.
type Fake struct {
	Metadata, API *httptest.Server

	mu sync.Mutex
	// Instance is what the metadata server reports.
	Instance Instance
	// TokenMode makes the metadata server hand out tokens and require them;
	// when false the token call is refused with 403.
	TokenMode bool
	// Role and RoleCreds are the instance's RAM role and its credentials;
	// RoleFetches counts how often they were fetched.
	Role        string
	RoleCreds   Credentials
	RoleFetches int
	// Disks are all disks the API knows, of any instance and category.
	Disks []FakeDisk
	// Types are the instance types the API knows.
	Types map[string]InstanceType
	// Throttle, Fail5xx and Malformed make the next API calls fail with HTTP
	// 400 Throttling.User, HTTP 500 InternalError, or a 200 with broken JSON;
	// a negative value fails every call. Delay slows every API answer.
	Throttle, Fail5xx, Malformed int
	Delay                        time.Duration
	// Calls records each API call's parameters.
	Calls []map[string]string
	// Instances are the instances that exist, by ID, with their status
	// (Running, Stopped, ...); one not here is released.
	Instances map[string]string
	// Events are the instances' system events; Accepted the IDs of those
	// accepted, in order.
	Events   []FakeEvent
	Accepted []string
	// others are the metadata servers of the instances AddInstance added.
	others []*httptest.Server
}

// FakeDisk is a disk as the fake API reports it.
type FakeDisk struct {
	ID, Category, InstanceID, Serial string
	SizeGiB                          int
}

// NewFake starts a fake ECS for one instance.
func NewFake(in Instance) *Fake {
	f := &Fake{Instance: in, Types: map[string]InstanceType{}, Instances: map[string]string{in.ID: "Running"}}
	f.Metadata = httptest.NewServer(f.metadataOf(func() Instance { return f.Instance }))
	f.API = httptest.NewServer(http.HandlerFunc(f.serveAPI))
	return f
}

// AddInstance makes the fake's API know another running instance and
// serves that instance's metadata on a server of its own, whose URL it
// returns: one fake ECS for a cluster of instances.
func (f *Fake) AddInstance(in Instance) string {
	srv := httptest.NewServer(f.metadataOf(func() Instance { return in }))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Instances[in.ID] = "Running"
	f.others = append(f.others, srv)
	return srv.URL
}

// Close stops the servers.
func (f *Fake) Close() {
	f.Metadata.Close()
	f.API.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.others {
		s.Close()
	}
}

const fakeToken = "fake-metadata-token"

// metadataOf serves the metadata of the instance that instance returns
// (called with the fake locked).
func (f *Fake) metadataOf(instance func() Instance) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { f.serveMetadata(w, r, instance) }
}

func (f *Fake) serveMetadata(w http.ResponseWriter, r *http.Request, instance func() Instance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := instance()
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut || !f.TokenMode {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if ttl, err := strconv.Atoi(r.Header.Get(tokenTTLHeader)); err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "bad ttl", http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, fakeToken)
		return
	}
	if f.TokenMode && r.Header.Get(tokenHeader) != fakeToken {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/latest/meta-data/")
	switch {
	case p == "instance-id":
		fmt.Fprint(w, in.ID)
	case p == "instance/instance-type":
		fmt.Fprint(w, in.Type)
	case p == "region-id":
		fmt.Fprint(w, in.Region)
	case p == "zone-id":
		fmt.Fprint(w, in.Zone)
	case p == "ram/security-credentials/" && f.Role != "":
		fmt.Fprint(w, f.Role)
	case f.Role != "" && p == "ram/security-credentials/"+f.Role:
		f.RoleFetches++
		c := f.RoleCreds
		json.NewEncoder(w).Encode(roleCredentials{AccessKeyID: c.AccessKeyID, AccessKeySecret: c.AccessKeySecret,
			SecurityToken: c.SecurityToken, Expiration: c.Expiration.UTC().Format(time.RFC3339), Code: "Success"})
	default:
		http.NotFound(w, r)
	}
}

// take consumes one injected fault from counter n.
func take(n *int) bool {
	switch {
	case *n < 0:
		return true
	case *n > 0:
		*n--
		return true
	}
	return false
}

func (f *Fake) serveAPI(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	params := map[string]string{}
	for k, v := range r.Form {
		params[k] = v[0]
	}
	f.mu.Lock()
	f.Calls = append(f.Calls, params)
	delay := f.Delay
	throttle, fail, malformed := take(&f.Throttle), take(&f.Fail5xx), take(&f.Malformed)
	f.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	w.Header().Set("Content-Type", "application/json")
	apiError := func(status int, code, msg string) {
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"RequestId": "fake", "HostId": "fake-ecs", "Code": code, "Message": msg})
	}
	switch {
	case throttle:
		apiError(http.StatusBadRequest, "Throttling.User", "Request was denied due to user flow control.")
		return
	case fail:
		apiError(http.StatusInternalServerError, "InternalError", "The request processing has failed due to some unknown error.")
		return
	case malformed:
		fmt.Fprint(w, `{"RequestId": "fake", "Disks": {"Disk": [`)
		return
	}
	switch params["Action"] {
	case "DescribeDisks":
		f.describeDisks(w, params)
	case "DescribeInstanceTypes":
		f.describeInstanceTypes(w, params)
	case "DescribeInstances":
		f.describeInstances(w, params)
	case "DescribeDisksFullStatus":
		f.describeDisksFullStatus(w, params)
	case "DescribeInstanceHistoryEvents":
		f.describeInstanceHistoryEvents(w, params)
	case "AcceptInquiredSystemEvent":
		f.acceptInquiredSystemEvent(w, params)
	default:
		apiError(http.StatusBadRequest, "InvalidAction.NotFound", "unknown action "+params["Action"])
	}
}

func (f *Fake) describeDisks(w http.ResponseWriter, p map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var match []map[string]any
	for _, d := range f.Disks {
		if p["InstanceId"] != "" && d.InstanceID != p["InstanceId"] {
			continue
		}
		match = append(match, map[string]any{"DiskId": d.ID, "Category": d.Category, "InstanceId": d.InstanceID,
			"SerialNumber": d.Serial, "Size": d.SizeGiB, "Status": "In_use", "Portable": !LocalCategories[d.Category],
			"Type": "data", "Device": "/dev/xvdb"})
	}
	start, _ := strconv.Atoi(p["NextToken"])
	size, _ := strconv.Atoi(p["MaxResults"])
	if size <= 0 {
		size = 10
	}
	end := min(start+size, len(match))
	next := ""
	if end < len(match) {
		next = strconv.Itoa(end)
	}
	page := []map[string]any{}
	if start < len(match) {
		page = match[start:end]
	}
	json.NewEncoder(w).Encode(map[string]any{"RequestId": "fake", "TotalCount": len(match), "NextToken": next,
		"Disks": map[string]any{"Disk": page}})
}

func (f *Fake) describeInstanceTypes(w http.ResponseWriter, p map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []map[string]any
	for k, v := range p {
		if !strings.HasPrefix(k, "InstanceTypes.") {
			continue
		}
		if t, ok := f.Types[v]; ok {
			out = append(out, map[string]any{"InstanceTypeId": v, "LocalStorageAmount": t.LocalStorageAmount,
				"LocalStorageCapacity": t.LocalStorageGiB, "LocalStorageCategory": t.LocalStorageCategory})
		}
	}
	json.NewEncoder(w).Encode(map[string]any{"RequestId": "fake", "InstanceTypes": map[string]any{"InstanceType": out}})
}

// SetFaults sets the fault counters under the lock.
func (f *Fake) SetFaults(throttle, fail5xx, malformed int, delay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Throttle, f.Fail5xx, f.Malformed, f.Delay = throttle, fail5xx, malformed, delay
}

// APICalls returns a copy of the recorded calls.
func (f *Fake) APICalls() []map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]string(nil), f.Calls...)
}

// Update runs fn under the fake's lock, to change its fields safely.
func (f *Fake) Update(fn func(f *Fake)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}
