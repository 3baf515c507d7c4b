package cloud

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk"
	sdkerrors "github.com/aliyun/alibaba-cloud-sdk-go/sdk/errors"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"
	"github.com/aliyun/alibaba-cloud-sdk-go/services/ecs"
	"k8s.io/klog/v2"
)

// LocalCategories are the ECS disk categories of local disks.
var LocalCategories = map[string]bool{
	"local_ssd_pro": true, "local_hdd_pro": true, "ephemeral": true, "ephemeral_ssd": true,
}

// CloudDisk is one disk of the instance as the ECS API describes it.
type CloudDisk struct {
	ID       string
	Category string
	// Local is set for local disks (LocalCategories); the rest are cloud
	// disks (system disk, attached data disks) that the driver never uses.
	Local   bool
	SizeGiB int
	// Serial is what the guest sees as the disk's serial: the API's
	// SerialNumber, else the disk ID without its "d-" prefix.
	Serial string
	Status string
}

// InstanceType is the local-storage part of an instance type.
type InstanceType struct {
	LocalStorageAmount   int
	LocalStorageGiB      int64
	LocalStorageCategory string
}

// APIConfig configures the ECS OpenAPI client.
type APIConfig struct {
	// Region is the instance's region.
	Region string
	// Endpoint overrides the ECS endpoint: a host (https) or a URL
	// (http://127.0.0.1:8080 for tests, a VPC endpoint in production).
	Endpoint string
	// Credentials signs the calls.
	Credentials CredentialProvider
	// CallTimeout bounds each HTTP call; default 10s.
	CallTimeout time.Duration
	// Attempts bounds the tries of one call; default 6.
	Attempts int
	// BaseDelay and MaxDelay shape the exponential backoff between tries;
	// default 500ms and 10s. The wait is drawn between half and all of it.
	BaseDelay, MaxDelay time.Duration
	// OnRequest, when set, hears of every try of a call: its action and
	// outcome ("success", "throttled" or "error"); for metrics.
	OnRequest func(action, outcome string)
}

// API calls the ECS OpenAPI.
type API struct {
	cfg            APIConfig
	scheme, domain string
}

// NewAPI validates cfg and returns the client.
func NewAPI(cfg APIConfig) (*API, error) {
	if cfg.Region == "" || cfg.Credentials == nil {
		return nil, errors.New("ECS API: region and credentials are required")
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if cfg.Attempts == 0 {
		cfg.Attempts = 6
	}
	if cfg.BaseDelay == 0 {
		cfg.BaseDelay = 500 * time.Millisecond
	}
	if cfg.MaxDelay == 0 {
		cfg.MaxDelay = 10 * time.Second
	}
	a := &API{cfg: cfg, scheme: "HTTPS"}
	if cfg.Endpoint != "" {
		if strings.Contains(cfg.Endpoint, "://") {
			u, err := url.Parse(cfg.Endpoint)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("ECS endpoint %q is not a host or URL", cfg.Endpoint)
			}
			a.scheme, a.domain = strings.ToUpper(u.Scheme), u.Host
		} else {
			a.domain = cfg.Endpoint
		}
	}
	return a, nil
}

// client builds an SDK client with the current credentials; credentials
// may rotate between calls, and calls are rare.
func (a *API) client(ctx context.Context) (*ecs.Client, error) {
	creds, err := a.cfg.Credentials.Get(ctx)
	if err != nil {
		return nil, err
	}
	conf := sdk.NewConfig().WithScheme(a.scheme).WithTimeout(a.cfg.CallTimeout)
	c, err := ecs.NewClientWithOptions(a.cfg.Region, conf, creds.sdkCredential())
	if err != nil {
		return nil, err
	}
	if a.domain != "" {
		c.Domain = a.domain
	}
	return c, nil
}

// retryable says whether an API error is worth another try: throttling
// (HTTP 400 with a Throttling code), server errors, and transport failures.
func retryable(err error) bool {
	var se *sdkerrors.ServerError
	if errors.As(err, &se) {
		return se.HttpStatus() >= 500 || strings.HasPrefix(se.ErrorCode(), "Throttling")
	}
	var ce *sdkerrors.ClientError
	var ue *url.Error
	return errors.As(err, &ce) || errors.As(err, &ue)
}

// call runs one API call with retries and capped, jittered exponential
// backoff, honouring ctx.
func (a *API) call(ctx context.Context, action string, do func(*ecs.Client) error) error {
	var err error
	attempt := 1
	for ; ; attempt++ {
		var c *ecs.Client
		if c, err = a.client(ctx); err != nil {
			return fmt.Errorf("ECS %s: %w", action, err)
		}
		err = do(c)
		a.observe(action, err)
		if err == nil {
			return nil
		}
		if !retryable(err) || attempt >= a.cfg.Attempts {
			break
		}
		delay := min(a.cfg.BaseDelay<<(attempt-1), a.cfg.MaxDelay)
		delay = delay/2 + time.Duration(rand.Int64N(int64(delay/2)+1))
		klog.InfoS("ECS API call failed, retrying", "action", action, "attempt", attempt, "retryIn", delay, "err", shortErr(err))
		select {
		case <-ctx.Done():
			return fmt.Errorf("ECS %s: %w (last error: %s)", action, ctx.Err(), shortErr(err))
		case <-time.After(delay):
		}
	}
	return fmt.Errorf("ECS %s failed after %d attempt(s): %s", action, attempt, shortErr(err))
}

// observe tells OnRequest the outcome of one try.
func (a *API) observe(action string, err error) {
	if a.cfg.OnRequest == nil {
		return
	}
	outcome := "success"
	var se *sdkerrors.ServerError
	switch {
	case errors.As(err, &se) && strings.HasPrefix(se.ErrorCode(), "Throttling"):
		outcome = "throttled"
	case err != nil:
		outcome = "error"
	}
	a.cfg.OnRequest(action, outcome)
}

// shortErr keeps the code and message of an SDK error, without the request
// dump the SDK appends, and never the request URL: its query carries the
// access key ID, the signature and, for STS credentials, the security token.
func shortErr(err error) string {
	var se *sdkerrors.ServerError
	if errors.As(err, &se) {
		return fmt.Sprintf("HTTP %d %s: %s", se.HttpStatus(), se.ErrorCode(), se.Message())
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		host := ue.URL
		if u, perr := url.Parse(ue.URL); perr == nil {
			host = u.Scheme + "://" + u.Host
		}
		return fmt.Sprintf("%s %s: %v", ue.Op, host, ue.Err)
	}
	s := err.Error()
	if i := strings.Index(s, "\n"); i > 0 {
		s = s[:i]
	}
	return s
}

// pageSize is how many disks one DescribeDisks page asks for.
const pageSize = 100

// maxPages bounds pagination, in case a server keeps returning a token.
const maxPages = 100

// InstanceDisks lists every disk of an instance, following pagination, with
// local disks marked.
func (a *API) InstanceDisks(ctx context.Context, instanceID string) ([]CloudDisk, error) {
	var out []CloudDisk
	token := ""
	for page := 0; page < maxPages; page++ {
		req := ecs.CreateDescribeDisksRequest()
		req.RegionId, req.InstanceId, req.NextToken = a.cfg.Region, instanceID, token
		req.MaxResults = requests.NewInteger(pageSize)
		var resp *ecs.DescribeDisksResponse
		err := a.call(ctx, "DescribeDisks", func(c *ecs.Client) (err error) {
			resp, err = c.DescribeDisks(req)
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, d := range resp.Disks.Disk {
			if d.InstanceId != "" && d.InstanceId != instanceID {
				continue
			}
			serial := d.SerialNumber
			if serial == "" {
				serial = strings.TrimPrefix(d.DiskId, "d-")
			}
			out = append(out, CloudDisk{ID: d.DiskId, Category: d.Category, Local: LocalCategories[d.Category], SizeGiB: d.Size, Serial: serial, Status: d.Status})
		}
		if token = resp.NextToken; token == "" {
			return out, nil
		}
	}
	return nil, fmt.Errorf("ECS DescribeDisks: more than %d pages", maxPages)
}

// InstanceType describes the local storage of an instance type.
func (a *API) InstanceType(ctx context.Context, name string) (InstanceType, error) {
	req := ecs.CreateDescribeInstanceTypesRequest()
	req.InstanceTypes = &[]string{name}
	var resp *ecs.DescribeInstanceTypesResponse
	err := a.call(ctx, "DescribeInstanceTypes", func(c *ecs.Client) (err error) {
		resp, err = c.DescribeInstanceTypes(req)
		return err
	})
	if err != nil {
		return InstanceType{}, err
	}
	for _, t := range resp.InstanceTypes.InstanceType {
		if t.InstanceTypeId == name {
			return InstanceType{LocalStorageAmount: t.LocalStorageAmount, LocalStorageGiB: t.LocalStorageCapacity, LocalStorageCategory: t.LocalStorageCategory}, nil
		}
	}
	return InstanceType{}, fmt.Errorf("ECS DescribeInstanceTypes: instance type %s not found", name)
}
