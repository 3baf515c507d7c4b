package cloud

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"
	"github.com/aliyun/alibaba-cloud-sdk-go/services/ecs"
)

// SystemEvent is an ECS system event of an instance that waits for the
// owner or runs (Inquiring, Executing): a damaged local disk's isolation or
// re-initialisation, or Disk:ErrorDetected.
type SystemEvent struct {
	ID, InstanceID string
	// Type is the event type's name, e.g. SystemMaintenance.IsolateErrorDisk.
	Type string
	// Status is the cycle status: Inquiring, Executing, ...
	Status string
	// DiskID and Device name the damaged disk, when the event names one.
	DiskID, Device string
	// CanAccept says whether AcceptInquiredSystemEvent applies.
	CanAccept bool
	Reason    string
	NotBefore string
}

// InstanceState is what DescribeInstances says of an instance.
type InstanceState struct {
	ID string
	// Status: Pending, Running, Starting, Stopping, Stopped.
	Status string
}

// batch is how many instances one call names at most (the API's limit).
const batch = 100

// Instances describes the instances of ids that exist, by ID: an ID missing
// from the answer is an instance that does not exist (released).
func (a *API) Instances(ctx context.Context, ids []string) (map[string]InstanceState, error) {
	out := map[string]InstanceState{}
	for start := 0; start < len(ids); start += batch {
		chunk := ids[start:min(start+batch, len(ids))]
		names, err := json.Marshal(chunk)
		if err != nil {
			return nil, err
		}
		token := ""
		for page := 0; ; page++ {
			if page == maxPages {
				return nil, fmt.Errorf("ECS DescribeInstances: more than %d pages", maxPages)
			}
			req := ecs.CreateDescribeInstancesRequest()
			req.RegionId, req.InstanceIds, req.NextToken = a.cfg.Region, string(names), token
			req.MaxResults = requests.NewInteger(batch)
			var resp *ecs.DescribeInstancesResponse
			if err := a.call(ctx, "DescribeInstances", func(c *ecs.Client) (err error) {
				resp, err = c.DescribeInstances(req)
				return err
			}); err != nil {
				return nil, err
			}
			for _, in := range resp.Instances.Instance {
				out[in.InstanceId] = InstanceState{ID: in.InstanceId, Status: in.Status}
			}
			if token = resp.NextToken; token == "" {
				break
			}
		}
	}
	return out, nil
}

// ActiveEvents lists the system events of the instances of ids that wait
// for the owner or run (Inquiring, Executing), of the types given (all
// when none), in calls of at most 100 instances, following pagination.
func (a *API) ActiveEvents(ctx context.Context, ids []string, types ...string) ([]SystemEvent, error) {
	var out []SystemEvent
	for start := 0; start < len(ids); start += batch {
		chunk := ids[start:min(start+batch, len(ids))]
		token := ""
		for page := 0; ; page++ {
			if page == maxPages {
				return nil, fmt.Errorf("ECS DescribeInstanceHistoryEvents: more than %d pages", maxPages)
			}
			req := ecs.CreateDescribeInstanceHistoryEventsRequest()
			req.RegionId, req.NextToken = a.cfg.Region, token
			req.MaxResults = requests.NewInteger(batch)
			req.ResourceId = &chunk
			status := []string{"Inquiring", "Executing"}
			req.InstanceEventCycleStatus = &status
			if len(types) > 0 {
				req.InstanceEventType = &types
			}
			var resp *ecs.DescribeInstanceHistoryEventsResponse
			if err := a.call(ctx, "DescribeInstanceHistoryEvents", func(c *ecs.Client) (err error) {
				resp, err = c.DescribeInstanceHistoryEvents(req)
				return err
			}); err != nil {
				return nil, err
			}
			for _, e := range resp.InstanceSystemEventSet.InstanceSystemEventType {
				out = append(out, SystemEvent{ID: e.EventId, InstanceID: e.InstanceId, Type: e.EventType.Name, Status: e.EventCycleStatus.Name,
					DiskID: e.ExtendedAttribute.DiskId, Device: e.ExtendedAttribute.Device, CanAccept: e.ExtendedAttribute.CanAccept == "true",
					Reason: e.Reason, NotBefore: e.NotBefore})
			}
			if token = resp.NextToken; token == "" {
				break
			}
		}
	}
	return out, nil
}

// AcceptEvent gives the owner's consent to an Inquiring system event: ECS
// carries out its default action (for a damaged local disk, isolating or
// re-initialising it).
func (a *API) AcceptEvent(ctx context.Context, eventID string) error {
	req := ecs.CreateAcceptInquiredSystemEventRequest()
	req.RegionId, req.EventId = a.cfg.Region, eventID
	return a.call(ctx, "AcceptInquiredSystemEvent", func(c *ecs.Client) error {
		_, err := c.AcceptInquiredSystemEvent(req)
		return err
	})
}

// DiskErrorEvent is the type DiskErrors gives the events it returns.
const DiskErrorEvent = "Disk:ErrorDetected"

// DiskErrors lists the ErrorDetected events of the disks of ids that are
// still in effect (DescribeDisksFullStatus, EventType ErrorDetected: "the
// local disk is damaged"), as system events of type Disk:ErrorDetected,
// in calls of at most 100 disks. An event whose end time has passed is
// over; one without an end time is in effect.
func (a *API) DiskErrors(ctx context.Context, ids []string, now time.Time) ([]SystemEvent, error) {
	var out []SystemEvent
	for start := 0; start < len(ids); start += batch {
		chunk := ids[start:min(start+batch, len(ids))]
		for page := 1; ; page++ {
			if page > maxPages {
				return nil, fmt.Errorf("ECS DescribeDisksFullStatus: more than %d pages", maxPages)
			}
			req := ecs.CreateDescribeDisksFullStatusRequest()
			req.RegionId, req.DiskId, req.EventType = a.cfg.Region, &chunk, "ErrorDetected"
			req.PageNumber, req.PageSize = requests.NewInteger(page), requests.NewInteger(batch)
			var resp *ecs.DescribeDisksFullStatusResponse
			if err := a.call(ctx, "DescribeDisksFullStatus", func(c *ecs.Client) (err error) {
				resp, err = c.DescribeDisksFullStatus(req)
				return err
			}); err != nil {
				return nil, err
			}
			items := resp.DiskFullStatusSet.DiskFullStatusType
			for _, d := range items {
				for _, e := range d.DiskEventSet.DiskEventType {
					if e.EventType.Name != "ErrorDetected" || ended(e.EventEndTime, now) {
						continue
					}
					out = append(out, SystemEvent{ID: e.EventId, InstanceID: d.InstanceId, Type: DiskErrorEvent, Status: "Executing",
						DiskID: d.DiskId, Device: d.Device, NotBefore: e.EventTime})
				}
			}
			if len(items) < batch || page*batch >= resp.TotalCount {
				break
			}
		}
	}
	return out, nil
}

// ended says whether an event's end time (RFC 3339, "" for none) has passed.
func ended(end string, now time.Time) bool {
	if end == "" {
		return false
	}
	t, err := time.Parse(time.RFC3339, end)
	return err == nil && !t.After(now)
}
