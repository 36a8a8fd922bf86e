# Fused GEMM kernel: OUT = relu(requantize(A @ B + bias)) in one pass, no round trip
# to external memory between the matrix multiply and its epilogue.
#
# The caller defines ROWS and COLS (the array size) and places the operands:
#   A      M x K int8, row-major, at A_DRAM
#   B      K x N int8, row-major, at B_DRAM
#   PARAMS three int32 rows of N: bias, requantize multiplier, requantize shift
# and reads the int8 M x N result at OUT_DRAM and the counter snapshot at CNT_DRAM.

.equ M, 16
.equ K, 4 * ROWS            # four K-chunks of the array height
.equ N, COLS

# External memory map.
.equ PROGRAM_BYTES, 0x1000
.equ A_DRAM,     0x1000
.equ B_DRAM,     0x2000
.equ PARAM_DRAM, 0x3000
.equ OUT_DRAM,   0x4000
.equ CNT_DRAM,   0x5000

# Scratchpad rows: A as four chunks of M rows (ROWS bytes used each), then B.
.equ A_SPAD,   0
.equ B_SPAD,   4 * M
.equ OUT_SPAD, B_SPAD + K
# Accumulator rows: C, then bias, multiplier, shift.
.equ C_ACC,     0
.equ PARAM_ACC, M

start:
    # Load unit: A chunk c is column block c of A, a strided copy of M rows.
    load  mem=spad addr=A_SPAD       rows=M len=ROWS dram=A_DRAM            stride=K
    load  mem=spad addr=A_SPAD+M     rows=M len=ROWS dram=A_DRAM+ROWS       stride=K
    load  mem=spad addr=A_SPAD+2*M   rows=M len=ROWS dram=A_DRAM+2*ROWS     stride=K
    load  mem=spad addr=A_SPAD+3*M   rows=M len=ROWS dram=A_DRAM+3*ROWS     stride=K
    load  mem=spad addr=B_SPAD       rows=K len=N    dram=B_DRAM            stride=N
    load  mem=acc  addr=PARAM_ACC    rows=3 len=N    dram=PARAM_DRAM        stride=4*N  push_next

compute:
    # Compute unit: waits for the loads' token, then matmul and the fused epilogue.
    matmul   acc=C_ACC a=A_SPAD b=B_SPAD a_stride=M m=M n=N k=K  pop_prev
    epilogue src=C_ACC m=M n=N dst=OUT_SPAD bias bias_addr=PARAM_ACC requant quant_addr=PARAM_ACC+1 act=relu push_next

store:
    # Store unit: waits for the epilogue's token.
    store mem=spad addr=OUT_SPAD rows=M len=N dram=OUT_DRAM stride=N  pop_prev

    counters dram=CNT_DRAM
    halt
