// ASIC reciprocal unit: y = 1/a in FP32 by Newton-Raphson, pipelined.
//   a = +-m * 2**(E-126), m = {0, 126, frac(a)} in [0.5, 1)
//   stage 1: y0 = 48/17 + m * (-32/17)                 (max relative error 1/17)
//   stages 2 .. ITERS+1: y = y * (2 - m * y)           (fp32_mul, fp32_add, fp32_mul)
//   output stage: y * 2**-(E-126) via the exponent field, sign of a (>= 255: inf, <= 0: 0)
// +-0 and subnormals give +-inf, +-inf gives +-0, NaN gives 0x7FC00000.
// Golden model: pimsim.numerics.fp32_recip(a, iters=ITERS).
// One operation per cycle; latency ITERS + 2 cycles. side_in travels to side_out.
module fp32_recip_pipe #(
    parameter ITERS  = 3,          // Newton-Raphson iterations, >= 0
    parameter SIDE_W = 1           // width of the side-band, bits
) (
    input  wire              clk,
    input  wire              rst_n,     // synchronous, active low: clears the valid bits
    input  wire              in_valid,
    input  wire [31:0]       a,
    input  wire [SIDE_W-1:0] side_in,
    output reg               out_valid,
    output reg  [31:0]       y,
    output reg  [SIDE_W-1:0] side_out
);
    localparam CW = SIDE_W + 8 + 4;    // context: {side, E, sign, nan, inf, zero}

    // stage 1: initial estimate
    wire [31:0] m = {1'b0, 8'd126, a[22:0]};
    wire [31:0] q, y0;
    fp32_mul_comb m_q  (.a(m), .b(32'hBFF0F0F1), .y(q));      // -32/17
    fp32_add_comb a_y0 (.a(32'h4034B4B5), .b(q), .y(y0));     // 48/17
    reg          v1;
    reg [31:0]   y1, m1;
    reg [CW-1:0] ctx1;
    always @(posedge clk) begin
        v1   <= rst_n & in_valid;
        y1   <= y0;
        m1   <= m;
        ctx1 <= {side_in, a[30:23], a[31],
                 (a[30:23] == 8'hFF) && (a[22:0] != 23'd0),
                 (a[30:23] == 8'hFF) && (a[22:0] == 23'd0),
                 (a[30:23] == 8'd0)};
    end

    // Newton stages
    wire [ITERS:0]          nv;
    wire [32*(ITERS+1)-1:0] ny, nm;
    wire [CW*(ITERS+1)-1:0] nc;
    assign nv[0]      = v1;
    assign ny[31:0]   = y1;
    assign nm[31:0]   = m1;
    assign nc[CW-1:0] = ctx1;
    genvar j;
    generate
        for (j = 1; j <= ITERS; j = j + 1) begin : newton
            fp32_recip_stage #(.CW(CW)) st (
                .clk(clk), .rst_n(rst_n), .v_in(nv[j-1]),
                .y_in(ny[32*(j-1) +: 32]), .m_in(nm[32*(j-1) +: 32]), .ctx_in(nc[CW*(j-1) +: CW]),
                .v_out(nv[j]), .y_out(ny[32*j +: 32]), .m_out(nm[32*j +: 32]),
                .ctx_out(nc[CW*j +: CW]));
        end
    endgenerate

    // output stage
    wire [31:0]   yn   = ny[32*ITERS +: 32];   // positive: yn[31] is 0
    wire          unused_sign = yn[31];
    wire [31:0]   unused_m = nm[32*ITERS +: 32];
    wire [CW-1:0] ctxn = nc[CW*ITERS +: CW];
    wire [7:0]    ea   = ctxn[11:4];
    wire          sa   = ctxn[3];
    wire signed [10:0] en = $signed({3'b000, yn[30:23]}) + 11'sd126 - $signed({3'b000, ea});
    wire [31:0] scaled = (en >= 11'sd255) ? {sa, 8'hFF, 23'd0} :
                         (en <= 11'sd0)   ? {sa, 31'd0} :
                                            {sa, en[7:0], yn[22:0]};
    always @(posedge clk) begin
        out_valid <= rst_n & nv[ITERS];
        y         <= ctxn[2] ? 32'h7FC00000 :          // NaN
                     ctxn[1] ? {sa, 31'd0} :           // +-inf -> +-0
                     ctxn[0] ? {sa, 8'hFF, 23'd0} :    // +-0 -> +-inf
                               scaled;
        side_out  <= ctxn[CW-1 -: SIDE_W];
    end
endmodule

// Registered reciprocal unit (no side-band): one operation per cycle, latency ITERS + 2.
module fp32_recip #(
    parameter ITERS = 3            // Newton-Raphson iterations, see fp32_recip_pipe
) (
    input  wire        clk,
    input  wire        rst_n,      // synchronous, active low: clears out_valid
    input  wire        in_valid,
    input  wire [31:0] a,
    output wire        out_valid,
    output wire [31:0] y
);
    wire unused_side;
    fp32_recip_pipe #(.ITERS(ITERS), .SIDE_W(1)) core (
        .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .a(a), .side_in(1'b0),
        .out_valid(out_valid), .y(y), .side_out(unused_side));
endmodule
