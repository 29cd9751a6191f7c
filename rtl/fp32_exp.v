// ASIC exp unit: y = e**x in FP32 by range reduction and a Taylor polynomial, pipelined.
//   stage 1: t  = x * log2(e) ; km = t + 1.5*2**23
//            (k = bits(km) - bits(1.5*2**23) = round-to-nearest-even(t))
//   stage 2: kf = km - 1.5*2**23 (= k) ; r = (x + kf * (-LN2_HI)) + kf * (-LN2_LO)
//            (Cody-Waite; kf * LN2_HI is exact)
//   stages 3 .. DEGREE+2: Horner, p = c_N ; p = p * r + c_i for i = N-1 .. 0 (c_i = 1/i!)
//   output stage: y = p * 2**k via the exponent field (>= 255: +inf, <= 0: +0)
// |t| >= 256 (exponent field of t >= 135, also x = +-inf) gives +inf for x > 0, +0 for
// x < 0; NaN gives 0x7FC00000. Golden model: pimsim.numerics.fp32_exp(x, degree=DEGREE).
// One operation per cycle; latency DEGREE + 3 cycles. side_in travels with the operand to
// side_out (used by the GELU unit).
module fp32_exp_pipe #(
    parameter DEGREE = 6,          // Taylor degree N, 1..12
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
    // FP32 bits of 1/i!, i = 0..12 (entry i at bits [32*i +: 32])
    localparam [32*13-1:0] COEF = {
        32'h310F76C7, 32'h32D7322B, 32'h3493F27E, 32'h3638EF1D,   // 12, 11, 10, 9
        32'h37D00D01, 32'h39500D01, 32'h3AB60B61, 32'h3C088889,   // 8, 7, 6, 5
        32'h3D2AAAAB, 32'h3E2AAAAB, 32'h3F000000, 32'h3F800000,   // 4, 3, 2, 1
        32'h3F800000};                                            // 0
    localparam CW = SIDE_W + 11 + 3;   // context: {side, k, nan, big, sign of x}

    // stage 1
    wire [31:0] t, km;
    fp32_mul_comb m_t  (.a(a), .b(32'h3FB8AA3B), .y(t));     // log2(e)
    fp32_add_comb a_km (.a(t), .b(32'h4B400000), .y(km));    // + 1.5*2**23
    reg              v1;
    reg [31:0]       x1, km1;
    reg              nan1, big1, neg1;
    reg [SIDE_W-1:0] side1;
    always @(posedge clk) begin
        v1    <= rst_n & in_valid;
        x1    <= a;
        km1   <= km;
        nan1  <= (a[30:23] == 8'hFF) && (a[22:0] != 23'd0);
        big1  <= (t[30:23] >= 8'd135);
        neg1  <= a[31];
        side1 <= side_in;
    end

    // stage 2
    wire [31:0] kf, kh, r1, kl, r;
    fp32_add_comb a_kf (.a(km1), .b(32'hCB400000), .y(kf));  // - 1.5*2**23
    fp32_mul_comb m_kh (.a(kf),  .b(32'hBF317200), .y(kh));  // -LN2_HI
    fp32_add_comb a_r1 (.a(x1),  .b(kh),           .y(r1));
    fp32_mul_comb m_kl (.a(kf),  .b(32'hB5BFBE8E), .y(kl));  // -LN2_LO
    fp32_add_comb a_r  (.a(r1),  .b(kl),           .y(r));
    reg          v2;
    reg [31:0]   r2;
    reg [CW-1:0] ctx2;
    always @(posedge clk) begin
        v2   <= rst_n & v1;
        r2   <= r;
        // k = bits(km) - 0x4B400000 = km[10:0] as a signed number when |k| <= 256
        ctx2 <= {side1, km1[10:0], nan1, big1, neg1};
    end

    // Horner stages
    wire [DEGREE:0]          hv;
    wire [32*(DEGREE+1)-1:0] hh, hr;
    wire [CW*(DEGREE+1)-1:0] hc;
    assign hv[0]        = v2;
    assign hh[31:0]     = COEF[32*DEGREE +: 32];
    assign hr[31:0]     = r2;
    assign hc[CW-1:0]   = ctx2;
    genvar j;
    generate
        for (j = 1; j <= DEGREE; j = j + 1) begin : horner
            fp32_horner_stage #(.CW(CW)) st (
                .clk(clk), .rst_n(rst_n), .v_in(hv[j-1]),
                .h_in(hh[32*(j-1) +: 32]), .r_in(hr[32*(j-1) +: 32]),
                .c(COEF[32*(DEGREE-j) +: 32]), .ctx_in(hc[CW*(j-1) +: CW]),
                .v_out(hv[j]), .h_out(hh[32*j +: 32]), .r_out(hr[32*j +: 32]),
                .ctx_out(hc[CW*j +: CW]));
        end
    endgenerate

    // output stage
    wire [31:0]       p    = hh[32*DEGREE +: 32];   // positive: p[31] is 0
    wire              unused_sign = p[31];
    wire [31:0]       unused_r = hr[32*DEGREE +: 32];
    wire [CW-1:0]     ctxn = hc[CW*DEGREE +: CW];
    wire [SIDE_W-1:0] side_n = ctxn[CW-1 -: SIDE_W];
    wire signed [10:0] k   = $signed(ctxn[13:3]);
    wire              nan_n = ctxn[2];
    wire              big_n = ctxn[1];
    wire              neg_n = ctxn[0];
    wire signed [10:0] en  = $signed({3'b000, p[30:23]}) + k;
    wire [31:0] scaled = (en >= 11'sd255) ? 32'h7F800000 :
                         (en <= 11'sd0)   ? 32'h00000000 :
                                            {1'b0, en[7:0], p[22:0]};
    always @(posedge clk) begin
        out_valid <= rst_n & hv[DEGREE];
        y         <= nan_n ? 32'h7FC00000 :
                     big_n ? (neg_n ? 32'h00000000 : 32'h7F800000) :
                             scaled;
        side_out  <= side_n;
    end
endmodule

// Registered exp unit (no side-band): one operation per cycle, latency DEGREE + 3.
module fp32_exp #(
    parameter DEGREE = 6           // Taylor degree, see fp32_exp_pipe
) (
    input  wire        clk,
    input  wire        rst_n,      // synchronous, active low: clears out_valid
    input  wire        in_valid,
    input  wire [31:0] a,
    output wire        out_valid,
    output wire [31:0] y
);
    wire unused_side;
    fp32_exp_pipe #(.DEGREE(DEGREE), .SIDE_W(1)) core (
        .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .a(a), .side_in(1'b0),
        .out_valid(out_valid), .y(y), .side_out(unused_side));
endmodule
