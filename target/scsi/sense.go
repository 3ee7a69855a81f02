package scsi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// SenseKey is the SPC sense key of a CHECK CONDITION.
type SenseKey byte

// Sense keys (SPC-4 table 48).
const (
	SenseNoSense        SenseKey = 0x0
	SenseRecoveredError SenseKey = 0x1
	SenseNotReady       SenseKey = 0x2
	SenseMediumError    SenseKey = 0x3
	SenseHardwareError  SenseKey = 0x4
	SenseIllegalRequest SenseKey = 0x5
	SenseUnitAttention  SenseKey = 0x6
	SenseDataProtect    SenseKey = 0x7
	SenseCopyAborted    SenseKey = 0xa
	SenseAbortedCommand SenseKey = 0xb
	SenseMiscompare     SenseKey = 0xe
)

// ASC is an additional sense code (high byte) and qualifier (low byte).
type ASC uint16

// Additional sense codes used by the device server.
const (
	ASCNoAdditionalSense            ASC = 0x0000
	ASCNotReady                     ASC = 0x0400
	ASCWriteError                   ASC = 0x0c00
	ASCInvalidFieldInCmdIU          ASC = 0x0e03
	ASCUnrecoveredReadError         ASC = 0x1100
	ASCParameterListLengthError     ASC = 0x1a00
	ASCMiscompareDuringVerify       ASC = 0x1d00
	ASCInvalidOpcode                ASC = 0x2000
	ASCLBAOutOfRange                ASC = 0x2100
	ASCInvalidFieldInCDB            ASC = 0x2400
	ASCLUNotSupported               ASC = 0x2500
	ASCInvalidFieldInParameterList  ASC = 0x2600
	ASCParameterValueInvalid        ASC = 0x2602
	ASCInvalidReleaseOfPR           ASC = 0x2604
	ASCPowerOnReset                 ASC = 0x2900
	ASCBusDeviceResetOccurred       ASC = 0x2903
	ASCITNexusLoss                  ASC = 0x2907
	ASCModeParametersChanged        ASC = 0x2a01
	ASCReservationsPreempted        ASC = 0x2a03
	ASCReservationsReleased         ASC = 0x2a04
	ASCRegistrationsPreempted       ASC = 0x2a05
	ASCCapacityDataChanged          ASC = 0x2a09
	ASCCommandsCleared              ASC = 0x2f00
	ASCSavingParametersUnsupported  ASC = 0x3900
	ASCReportedLUNsDataChanged      ASC = 0x3f0e
	ASCInternalTargetFailure        ASC = 0x4400
	ASCMediumRemovalPrevented       ASC = 0x5302
	ASCInsufficientRegistrationRes  ASC = 0x5504
	ASCInvalidCommandOperationCode  ASC = ASCInvalidOpcode
	ASCLogicalUnitCommunicationFail ASC = 0x0800

	// Third-party copy (SPC-4 6.4) and SANITIZE (SBC-4 5.30).
	ASCOperationInProgress          ASC = 0x0016
	ASCSanitizeInProgress           ASC = 0x041b
	ASCUnreachableCopyTarget        ASC = 0x0804
	ASCCopyTargetDeviceNotReachable ASC = 0x0d02
	ASCTooManyTargetDescriptors     ASC = 0x2606
	ASCUnsupportedTargetDescType    ASC = 0x2607
	ASCTooManySegmentDescriptors    ASC = 0x2608
	ASCUnsupportedSegmentDescType   ASC = 0x2609
	ASCSanitizeFailed               ASC = 0x3103
	ASCSoftwareWriteProtected       ASC = 0x2702
)

// FixedSenseLen is the length of the fixed-format sense data the device
// server returns.
const FixedSenseLen = 18

// SenseError is a SCSI outcome carried as a Go error: a sense key, an
// additional sense code and the optional INFORMATION and sense-key-specific
// fields. Handlers return it; Execute turns it into CHECK CONDITION.
type SenseError struct {
	Key SenseKey
	ASC ASC

	// InfoValid says Info goes into the INFORMATION field (VALID bit).
	InfoValid bool
	Info      uint32

	// FieldValid says the sense-key-specific field pointer is set: it
	// points at byte Field (bit Bit when BitValid) of the CDB (InCDB) or
	// of the parameter list.
	FieldValid bool
	InCDB      bool
	BitValid   bool
	Bit        uint8
	Field      uint16

	// SegmentPointer makes the sense-key-specific field the segment
	// pointer of a COPY ABORTED (SPC-4 4.5.2.4.5): SD=1, Field counts
	// from the start of the segment descriptor in error.
	SegmentPointer bool
	// CmdSpecific is the COMMAND-SPECIFIC INFORMATION field (the
	// number of the segment descriptor being processed when a copy
	// failed).
	CmdSpecific uint32
	// Progress, when ProgressValid, is the sense-key-specific progress
	// indication (NOT READY during SANITIZE): done/65536 of the work.
	ProgressValid bool
	Progress      uint16
}

func (e *SenseError) Error() string {
	return fmt.Sprintf("scsi: sense key %#x asc/ascq %02x/%02x", byte(e.Key), byte(e.ASC>>8), byte(e.ASC))
}

// Bytes encodes the error as fixed-format sense data (SPC-4 4.5.3).
func (e *SenseError) Bytes() []byte {
	b := make([]byte, FixedSenseLen)
	b[0] = 0x70 // current error, fixed format
	if e.InfoValid {
		b[0] |= 0x80
		binary.BigEndian.PutUint32(b[3:7], e.Info)
	}
	b[2] = byte(e.Key) & 0x0f
	b[7] = FixedSenseLen - 8
	b[12] = byte(e.ASC >> 8)
	b[13] = byte(e.ASC)
	binary.BigEndian.PutUint32(b[8:12], e.CmdSpecific)
	if e.ProgressValid {
		b[15] = 0x80
		binary.BigEndian.PutUint16(b[16:18], e.Progress)
	}
	if e.FieldValid {
		b[15] = 0x80
		if e.InCDB {
			b[15] |= 0x40
		}
		if e.SegmentPointer {
			b[15] |= 0x20
		}
		if e.BitValid {
			b[15] |= 0x08 | (e.Bit & 0x07)
		}
		binary.BigEndian.PutUint16(b[16:18], e.Field)
	}
	return b
}

// Sense returns fixed-format sense data with a key and an additional
// sense code and nothing else: for the front ends' own CHECK CONDITIONs
// (a transport error, a device that is not ready), so that every sense
// byte the target sends is encoded here.
func Sense(key SenseKey, asc ASC) []byte { return newSense(key, asc).Bytes() }

// newSense returns a SenseError without INFORMATION or field pointer.
func newSense(key SenseKey, asc ASC) *SenseError {
	return &SenseError{Key: key, ASC: asc}
}

// errInvalidOpcode is ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE,
// pointing at byte 0 of the CDB.
func errInvalidOpcode() *SenseError {
	return &SenseError{Key: SenseIllegalRequest, ASC: ASCInvalidOpcode, FieldValid: true, InCDB: true}
}

// errCDBField is ILLEGAL REQUEST / INVALID FIELD IN CDB with a field pointer
// to byte field (and bit, when bit >= 0) of the CDB.
func errCDBField(field int, bit int) *SenseError {
	e := &SenseError{Key: SenseIllegalRequest, ASC: ASCInvalidFieldInCDB, FieldValid: true, InCDB: true, Field: uint16(field)}
	if bit >= 0 {
		e.BitValid = true
		e.Bit = uint8(bit)
	}
	return e
}

// errParamField is ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST with a
// field pointer into the parameter list.
func errParamField(field int, bit int) *SenseError {
	e := &SenseError{Key: SenseIllegalRequest, ASC: ASCInvalidFieldInParameterList, FieldValid: true, Field: uint16(field)}
	if bit >= 0 {
		e.BitValid = true
		e.Bit = uint8(bit)
	}
	return e
}

func errParamListLength() *SenseError {
	return newSense(SenseIllegalRequest, ASCParameterListLengthError)
}

func errLBAOutOfRange() *SenseError {
	return newSense(SenseIllegalRequest, ASCLBAOutOfRange)
}

// ioKind says which direction failed, for the MEDIUM ERROR code.
type ioKind int

const (
	ioRead ioKind = iota
	ioWrite
	ioOther
)

// errTaskAborted is returned by volume calls whose context was cancelled
// (the transport aborted the task); Execute answers TASK ABORTED.
var errTaskAborted = errors.New("scsi: task aborted")
