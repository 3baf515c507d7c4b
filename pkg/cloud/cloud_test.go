package cloud

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
)

var testInstance = Instance{ID: "i-bp1test", Type: "ecs.i4.2xlarge", Region: "cn-hangzhou", Zone: "cn-hangzhou-k"}

func newFake(t *testing.T) *Fake {
	f := NewFake(testInstance)
	t.Cleanup(f.Close)
	return f
}

func TestMetadataModes(t *testing.T) {
	for _, tokenMode := range []bool{false, true} {
		t.Run(fmt.Sprintf("token=%v", tokenMode), func(t *testing.T) {
			f := newFake(t)
			f.TokenMode = tokenMode
			md := NewMetadata(f.Metadata.URL)
			in, err := md.Instance(context.Background())
			if err != nil || in != testInstance {
				t.Fatalf("Instance = %+v, %v", in, err)
			}
			// Cached: a dead server does not matter any more.
			f.Metadata.Close()
			if again, err := md.Instance(context.Background()); err != nil || again != in {
				t.Fatalf("cached Instance = %+v, %v", again, err)
			}
		})
	}
}

func TestMetadataUnreachableIsQuick(t *testing.T) {
	f := newFake(t)
	url := f.Metadata.URL
	f.Metadata.Close()
	start := time.Now()
	if _, err := NewMetadata(url).Instance(context.Background()); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestCredentialModes(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	md := NewMetadata(f.Metadata.URL)
	p, err := NewCredentialProvider(CredentialConfig{Getenv: env(map[string]string{"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIenv", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "sec"}), Metadata: md})
	if c, _ := p.Get(ctx); err != nil || p.Mode() != "access key from environment" || c.AccessKeyID != "LTAIenv" || c.SecurityToken != "" {
		t.Fatalf("env AK: %v %s %v", err, p.Mode(), c)
	}
	p, _ = NewCredentialProvider(CredentialConfig{Getenv: env(map[string]string{"ACCESS_KEY_ID": "LTAIold", "ACCESS_KEY_SECRET": "sec", "ALIBABA_CLOUD_SECURITY_TOKEN": "tok"})})
	if c, _ := p.Get(ctx); p.Mode() != "STS token from environment" || c.AccessKeyID != "LTAIold" || c.SecurityToken != "tok" {
		t.Fatalf("env STS: %s %v", p.Mode(), c)
	}
	if _, err := NewCredentialProvider(CredentialConfig{Getenv: env(map[string]string{"ACCESS_KEY_ID": "only-id"})}); err == nil {
		t.Fatal("half an access key accepted")
	}

	// A file, re-read when it changes.
	file := filepath.Join(t.TempDir(), "credentials")
	os.WriteFile(file, []byte("# from a Secret\nALIBABA_CLOUD_ACCESS_KEY_ID=LTAIfile1\nALIBABA_CLOUD_ACCESS_KEY_SECRET=s1\n"), 0o600)
	p, err = NewCredentialProvider(CredentialConfig{Getenv: env(nil), File: file})
	if c, _ := p.Get(ctx); err != nil || c.AccessKeyID != "LTAIfile1" {
		t.Fatalf("file: %v %v", err, c)
	}
	os.WriteFile(file, []byte("ALIBABA_CLOUD_ACCESS_KEY_ID=LTAIfile2\nALIBABA_CLOUD_ACCESS_KEY_SECRET=s2\nALIBABA_CLOUD_SECURITY_TOKEN=t2\n"), 0o600)
	os.Chtimes(file, time.Now().Add(time.Minute), time.Now().Add(time.Minute))
	if c, _ := p.Get(ctx); c.AccessKeyID != "LTAIfile2" || c.SecurityToken != "t2" {
		t.Fatalf("file not re-read: %v", c)
	}
	// A Secret volume: one file per key.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "access_key_id"), []byte("LTAIdir\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "access_key_secret"), []byte("sdir"), 0o600)
	p, err = NewCredentialProvider(CredentialConfig{Getenv: env(nil), File: dir})
	if c, _ := p.Get(ctx); err != nil || c.AccessKeyID != "LTAIdir" || c.AccessKeySecret != "sdir" {
		t.Fatalf("secret dir: %v %v", err, c)
	}
	if _, err := NewCredentialProvider(CredentialConfig{Getenv: env(nil), File: filepath.Join(dir, "missing")}); err == nil {
		t.Fatal("missing credentials file accepted")
	}

	// The RAM role: discovered, cached, renewed before it expires.
	f.Update(func(f *Fake) {
		f.Role = "KubernetesNodeRole"
		f.RoleCreds = Credentials{AccessKeyID: "STS.role1", AccessKeySecret: "rs", SecurityToken: "rt", Expiration: time.Now().Add(time.Hour)}
	})
	p, err = NewCredentialProvider(CredentialConfig{Getenv: env(nil), Metadata: md, RefreshBefore: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if c, err := p.Get(ctx); err != nil || c.AccessKeyID != "STS.role1" {
			t.Fatalf("role: %v %v", c, err)
		}
	}
	if f.RoleFetches != 1 || !strings.Contains(p.Mode(), "KubernetesNodeRole") {
		t.Fatalf("%d fetches, mode %s", f.RoleFetches, p.Mode())
	}
	f.Update(func(f *Fake) {
		f.RoleCreds = Credentials{AccessKeyID: "STS.role2", AccessKeySecret: "rs2", SecurityToken: "rt2", Expiration: time.Now().Add(5 * time.Minute)}
	})
	p.(*roleProvider).current.Expiration = time.Now().Add(9 * time.Minute) // inside the refresh window
	if c, _ := p.Get(ctx); c.AccessKeyID != "STS.role2" {
		t.Fatalf("not renewed before expiry: %v", c)
	}
}

func newAPI(t *testing.T, f *Fake, creds CredentialProvider) *API {
	if creds == nil {
		creds = static{Credentials{AccessKeyID: "LTAItest", AccessKeySecret: "secret-xyz"}, "test"}
	}
	a, err := NewAPI(APIConfig{Region: "cn-hangzhou", Endpoint: f.API.URL, Credentials: creds,
		CallTimeout: 300 * time.Millisecond, Attempts: 4, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func fakeDisks(f *Fake, n int) {
	for i := 0; i < n; i++ {
		f.Disks = append(f.Disks, FakeDisk{ID: fmt.Sprintf("d-bp1local%03d", i), Category: "local_ssd_pro", InstanceID: testInstance.ID, SizeGiB: 1788})
	}
	f.Disks = append(f.Disks,
		FakeDisk{ID: "d-bp1system", Category: "cloud_essd", InstanceID: testInstance.ID, Serial: "bp1system", SizeGiB: 40},
		FakeDisk{ID: "d-bp1other", Category: "local_ssd_pro", InstanceID: "i-other", SizeGiB: 1788},
		FakeDisk{ID: "d-bp1eed", Category: "elastic_ephemeral_disk_standard", InstanceID: testInstance.ID, SizeGiB: 100},
	)
}

func TestLocalDisksPaginationAndFiltering(t *testing.T) {
	f := newFake(t)
	fakeDisks(f, 250) // three pages of 100
	disks, err := newAPI(t, f, nil).InstanceDisks(context.Background(), testInstance.ID)
	if err != nil {
		t.Fatal(err)
	}
	local := 0
	for _, d := range disks {
		if d.Local {
			local++
		} else if d.Category == "local_ssd_pro" {
			t.Fatalf("local disk not marked: %+v", d)
		}
		if d.ID == "d-bp1other" {
			t.Fatal("another instance's disk listed")
		}
	}
	if len(disks) != 252 || local != 250 || disks[0].ID != "d-bp1local000" || disks[0].Serial != "bp1local000" {
		t.Fatalf("%d disks (%d local), first %+v", len(disks), local, disks[0])
	}
	calls := f.APICalls()
	if len(calls) != 3 || calls[1]["NextToken"] != "100" || calls[0]["InstanceId"] != testInstance.ID || calls[0]["AccessKeyId"] != "LTAItest" {
		t.Fatalf("calls %v", calls)
	}
}

func TestInstanceType(t *testing.T) {
	f := newFake(t)
	f.Types["ecs.i4.2xlarge"] = InstanceType{LocalStorageAmount: 1, LocalStorageGiB: 1788, LocalStorageCategory: "local_ssd_pro"}
	a := newAPI(t, f, static{Credentials{AccessKeyID: "STS.x", AccessKeySecret: "s", SecurityToken: "sts-token-abc"}, "test"})
	it, err := a.InstanceType(context.Background(), "ecs.i4.2xlarge")
	if err != nil || it.LocalStorageAmount != 1 || it.LocalStorageGiB != 1788 {
		t.Fatalf("%+v %v", it, err)
	}
	if c := f.APICalls()[0]; c["SecurityToken"] != "sts-token-abc" {
		t.Fatalf("STS token not sent: %v", c)
	}
	if _, err := a.InstanceType(context.Background(), "ecs.nope"); err == nil {
		t.Fatal("unknown type found")
	}
}

func TestAPIFaults(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name                string
		throttle, fail, bad int
		delay               time.Duration
		wantErr             string
		wantCalls           int
		wantOutcomes        string
	}{
		{"throttled then served", 2, 0, 0, 0, "", 3, "throttled throttled success"},
		{"5xx then served", 0, 3, 0, 0, "", 4, "error error error success"},
		{"throttled for ever", -1, 0, 0, 0, "Throttling.User", 4, "throttled throttled throttled throttled"},
		{"5xx for ever", 0, -1, 0, 0, "InternalError", 4, "error error error error"},
		{"timeouts", 0, 0, 0, time.Second, "Client.Timeout", 4, "error error error error"},
		{"malformed then served", 0, 0, 1, 0, "", 2, "error success"},
		{"malformed for ever", 0, 0, -1, 0, "JsonUnmarshalError", 4, "error error error error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFake(t)
			fakeDisks(f, 2)
			f.SetFaults(c.throttle, c.fail, c.bad, c.delay)
			a := newAPI(t, f, nil)
			var outcomes []string
			a.cfg.OnRequest = func(action, outcome string) {
				if action != "DescribeDisks" {
					t.Errorf("action %q", action)
				}
				outcomes = append(outcomes, outcome)
			}
			disks, err := a.InstanceDisks(ctx, testInstance.ID)
			if c.wantErr == "" && (err != nil || len(disks) != 4) {
				t.Fatalf("%v %v", disks, err)
			}
			if c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("err = %v, want %q", err, c.wantErr)
			}
			if n := len(f.APICalls()); n != c.wantCalls {
				t.Fatalf("%d calls, want %d", n, c.wantCalls)
			}
			if got := strings.Join(outcomes, " "); got != c.wantOutcomes {
				t.Fatalf("outcomes %q, want %q", got, c.wantOutcomes)
			}
		})
	}
	// A cancelled context stops the retries at once.
	f := newFake(t)
	f.SetFaults(-1, 0, 0, 0)
	a := newAPI(t, f, nil)
	a.cfg.BaseDelay, a.cfg.MaxDelay = time.Hour, time.Hour
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := a.InstanceDisks(cctx, testInstance.ID); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("err = %v", err)
	}
}

// TestSecretsNeverLogged runs every credential mode and API path with klog at
// its most verbose and fails if a secret or token shows up.
func TestSecretsNeverLogged(t *testing.T) {
	var buf bytes.Buffer
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("v", "10")
	fs.Set("logtostderr", "false")
	klog.SetOutputBySeverity("INFO", &buf)
	t.Cleanup(func() { fs.Set("v", "0"); klog.SetOutputBySeverity("INFO", os.Stderr) })

	secrets := []string{"env-secret-AAA", "env-token-BBB", "file-secret-CCC", "role-secret-DDD", "role-token-EEE"}
	ctx := context.Background()
	f := newFake(t)
	fakeDisks(f, 1)
	f.Role = "r"
	f.RoleCreds = Credentials{AccessKeyID: "STS.r", AccessKeySecret: secrets[3], SecurityToken: secrets[4], Expiration: time.Now().Add(time.Hour)}
	file := filepath.Join(t.TempDir(), "c")
	os.WriteFile(file, []byte("ACCESS_KEY_ID=LTAIf\nACCESS_KEY_SECRET="+secrets[2]+"\n"), 0o600)
	for _, cfg := range []CredentialConfig{
		{Getenv: env(map[string]string{"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIe", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": secrets[0], "ALIBABA_CLOUD_SECURITY_TOKEN": secrets[1]})},
		{Getenv: env(nil), File: file},
		{Getenv: env(nil), Metadata: NewMetadata(f.Metadata.URL)},
	} {
		p, err := NewCredentialProvider(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := p.Get(ctx)
		klog.InfoS("credentials in use", "credentials", c) // a careless log line
		f.SetFaults(1, 1, 0, 0)
		if _, err := newAPI(t, f, p).InstanceDisks(ctx, testInstance.ID); err != nil {
			t.Fatal(err)
		}
		for _, fault := range [][3]int{{-1, 0, 0}, {0, 0, -1}, {0, 0, 0}} {
			delay := time.Duration(0)
			if fault == [3]int{} {
				delay = time.Second // time out
			}
			f.SetFaults(fault[0], fault[1], fault[2], delay)
			_, err = newAPI(t, f, p).InstanceDisks(ctx, testInstance.ID)
			klog.ErrorS(err, "expected failure")
		}
		f.SetFaults(0, 0, 0, 0)
	}
	klog.Flush()
	out := buf.String()
	if !strings.Contains(out, "Cloud credentials") || !strings.Contains(out, "retrying") || !strings.Contains(out, "Client.Timeout") {
		t.Fatalf("the logs checked are not the ones expected:\n%s", out)
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatalf("secret %q in logs:\n%s", s, out)
		}
	}
}
