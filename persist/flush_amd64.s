#include "textflag.h"

// func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
TEXT ·cpuid(SB),NOSPLIT,$0-24
	MOVL leaf+0(FP), AX
	MOVL sub+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET

// func clwbRange(addr, n uintptr)
// Writes back every cache line overlapping [addr, addr+n), then SFENCE.
TEXT ·clwbRange(SB),NOSPLIT,$0-16
	MOVQ addr+0(FP), AX
	MOVQ n+8(FP), BX
	ADDQ AX, BX
	ANDQ $~63, AX
clwbloop:
	CMPQ AX, BX
	JAE clwbdone
	CLWB (AX)
	ADDQ $64, AX
	JMP clwbloop
clwbdone:
	SFENCE
	RET

// func clflushoptRange(addr, n uintptr)
TEXT ·clflushoptRange(SB),NOSPLIT,$0-16
	MOVQ addr+0(FP), AX
	MOVQ n+8(FP), BX
	ADDQ AX, BX
	ANDQ $~63, AX
optloop:
	CMPQ AX, BX
	JAE optdone
	CLFLUSHOPT (AX)
	ADDQ $64, AX
	JMP optloop
optdone:
	SFENCE
	RET

// func clflushRange(addr, n uintptr)
// CLFLUSH is ordered with respect to stores; the SFENCE keeps the
// contract of the other two.
TEXT ·clflushRange(SB),NOSPLIT,$0-16
	MOVQ addr+0(FP), AX
	MOVQ n+8(FP), BX
	ADDQ AX, BX
	ANDQ $~63, AX
flloop:
	CMPQ AX, BX
	JAE fldone
	CLFLUSH (AX)
	ADDQ $64, AX
	JMP flloop
fldone:
	SFENCE
	RET
