package scsi

import "github.com/cachelun/cachelun/internal/blk"

// Volume is what a logical unit serves: a block device addressed in bytes.
// cachecore.Volume implements it; tests use an in-memory implementation.
// Errors wrap the internal/blk sentinels (ErrOutOfRange, ErrMisaligned,
// ErrMedium, ErrNotReady, ErrMiscompare), which the device server maps to
// sense data. The context carries the I/O stream name (blk.WithStream) and
// is cancelled when the task is aborted.
type Volume = blk.Volume

// Status is a SAM status code.
type Status byte

// SAM status codes.
const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
	StatusTaskAborted         Status = 0x40
)

// TaskAttr is the SAM task attribute of a command.
type TaskAttr byte

// Task attributes as carried by iSCSI (ATTR field) and TCMU.
const (
	TaskUntagged TaskAttr = 0
	TaskSimple   TaskAttr = 1
	TaskOrdered  TaskAttr = 2
	TaskHead     TaskAttr = 3
	TaskACA      TaskAttr = 4
)

// Nexus identifies the I_T nexus a command arrived on. The port names use
// the SPC TransportID forms for iSCSI, so persistent reservations and unit
// attentions are tracked per initiator port.
type Nexus struct {
	// InitiatorName is the iSCSI initiator name (or the TCMU/LIO
	// equivalent), e.g. "iqn.1993-08.org.debian:01:abc".
	InitiatorName string
	// InitiatorPort is InitiatorName + ",i,0x" + ISID in hex.
	InitiatorPort string
	// TargetPort is the target name + ",t,0x" + TPGT in hex.
	TargetPort string
	// RelativePortID is the relative target port identifier (VPD 83h).
	RelativePortID uint16
}

// Command is one SCSI command as handed over by a transport.
type Command struct {
	Nexus *Nexus
	LUN   uint64
	CDB   []byte
	Tag   uint64
	Attr  TaskAttr

	// DataOut holds the data the initiator sent (write-type commands).
	// The transport collects all of it before Execute; its length is the
	// transport's expected data transfer length, which may differ from
	// what the CDB asks for (residual over- or underflow).
	DataOut []byte

	// DataInLen is the most data-in bytes the initiator accepts (the
	// expected data transfer length for reads).
	DataInLen uint32

	// DataIn, when non-nil with cap >= DataInLen, is a buffer the server
	// may use for the returned data, so reads need no allocation.
	DataIn []byte
}

// Response is the outcome of a command.
type Response struct {
	Status Status
	// Sense is fixed-format sense data for CHECK CONDITION, else nil.
	Sense []byte
	// Data is the data-in to return, never longer than Command.DataInLen.
	Data []byte
	// TransferLen is the number of bytes the CDB itself called for
	// (data-in or data-out), so the transport can report residual
	// overflow (TransferLen > expected) or underflow (TransferLen <
	// expected) as its protocol requires.
	TransferLen uint32
}
