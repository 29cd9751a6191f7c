// ASIC inverse-square-root unit: y = 1/sqrt(a) in FP32, the "fast inverse square root",
// pipelined.
//   stage 1: y0 = bits(0x5F3759DF - (bits(a) >> 1))
//   stages 2 .. ITERS+1: y = y * (1.5 - ((a * y) * y) * 0.5)   (each an FP32 primitive)
//   output stage: special cases
// +-0 and subnormals give +-inf, +inf gives +0, negative non-zero a (also -inf) and NaN
// give 0x7FC00000. Golden model: pimsim.numerics.fp32_rsqrt(a, iters=ITERS).
// One operation per cycle; latency ITERS + 2 cycles.
module fp32_rsqrt #(
    parameter ITERS = 2            // Newton iterations, >= 0
) (
    input  wire        clk,
    input  wire        rst_n,      // synchronous, active low: clears out_valid
    input  wire        in_valid,
    input  wire [31:0] a,
    output reg         out_valid,
    output reg  [31:0] y
);
    localparam CW = 33;            // context: {special-case result, use it}
    // stage 1: bit-trick estimate and the special-case class
    wire        sa = a[31];
    wire [7:0]  ea = a[30:23];
    wire        nan_a = (ea == 8'hFF) && (a[22:0] != 23'd0);
    reg          v1;
    reg [31:0]   y1, a1;
    reg [CW-1:0] ctx1;
    always @(posedge clk) begin
        v1    <= rst_n & in_valid;
        y1    <= 32'h5F3759DF - {1'b0, a[31:1]};
        a1    <= a;
        // special results in priority order: NaN, +-0 -> +-inf, negative -> NaN, +inf -> +0
        ctx1  <= {nan_a ? 32'h7FC00000 : (ea == 8'd0) ? {sa, 8'hFF, 23'd0} :
                  sa ? 32'h7FC00000 : 32'h00000000,
                  nan_a || (ea == 8'd0) || sa || (ea == 8'hFF)};
    end

    // Newton stages
    wire [ITERS:0]          nv;
    wire [32*(ITERS+1)-1:0] ny, na;
    wire [CW*(ITERS+1)-1:0] nc;
    assign nv[0]      = v1;
    assign ny[31:0]   = y1;
    assign na[31:0]   = a1;
    assign nc[CW-1:0] = ctx1;
    genvar j;
    generate
        for (j = 1; j <= ITERS; j = j + 1) begin : newton
            fp32_rsqrt_stage #(.CW(CW)) st (
                .clk(clk), .rst_n(rst_n), .v_in(nv[j-1]),
                .y_in(ny[32*(j-1) +: 32]), .a_in(na[32*(j-1) +: 32]),
                .ctx_in(nc[CW*(j-1) +: CW]),
                .v_out(nv[j]), .y_out(ny[32*j +: 32]), .a_out(na[32*j +: 32]),
                .ctx_out(nc[CW*j +: CW]));
        end
    endgenerate

    // output stage
    wire [CW-1:0] ctxn = nc[CW*ITERS +: CW];
    wire [31:0]   unused_a = na[32*ITERS +: 32];
    always @(posedge clk) begin
        out_valid <= rst_n & nv[ITERS];
        y         <= ctxn[0] ? ctxn[32:1] : ny[32*ITERS +: 32];
    end
endmodule
