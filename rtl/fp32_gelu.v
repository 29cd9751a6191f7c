// ASIC GELU unit, tanh form: gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))
// rewritten with tanh(u) = 1 - 2/(1 + e**(2u)) as gelu(x) = x / (1 + e**(-v)),
// v = x (C1 + C2 x**2), C1 = 2 sqrt(2/pi) (0x3FCC422A), C2 = 0.044715 C1 (0x3D922279):
//   stage 1: x2 = x * x ; v = x * (x2 * C2 + C1)
//   exp pipeline (EXP_DEGREE + 3 stages): e = exp(-v)
//   1 stage: d = 1 + e
//   reciprocal pipeline (RECIP_ITERS + 2 stages): r = 1/d
//   output stage: y = x * r
// x = -inf gives -0 (the limit); NaN gives 0x7FC00000.
// Golden model: pimsim.numerics.fp32_gelu(x, exp_degree=EXP_DEGREE, recip_iters=RECIP_ITERS).
// One operation per cycle; latency EXP_DEGREE + RECIP_ITERS + 8 cycles.
module fp32_gelu #(
    parameter EXP_DEGREE  = 6,     // Taylor degree of the exp
    parameter RECIP_ITERS = 3      // Newton-Raphson iterations of the reciprocal
) (
    input  wire        clk,
    input  wire        rst_n,      // synchronous, active low: clears out_valid
    input  wire        in_valid,
    input  wire [31:0] a,
    output reg         out_valid,
    output reg  [31:0] y
);
    localparam SW = 34;            // side-band: {x, x is NaN, x is -inf}

    // stage 1
    wire [31:0] x2, q, w, v;
    fp32_mul_comb m_x2 (.a(a),  .b(a),            .y(x2));
    fp32_mul_comb m_q  (.a(x2), .b(32'h3D922279), .y(q));
    fp32_add_comb a_w  (.a(q),  .b(32'h3FCC422A), .y(w));
    fp32_mul_comb m_v  (.a(a),  .b(w),            .y(v));
    reg          v1;
    reg [31:0]   nv1;
    reg [SW-1:0] s1;
    always @(posedge clk) begin
        v1  <= rst_n & in_valid;
        nv1 <= {~v[31], v[30:0]};
        s1  <= {a, (a[30:23] == 8'hFF) && (a[22:0] != 23'd0), a == 32'hFF800000};
    end

    // e = exp(-v)
    wire          ve;
    wire [31:0]   e;
    wire [SW-1:0] se;
    fp32_exp_pipe #(.DEGREE(EXP_DEGREE), .SIDE_W(SW)) u_exp (
        .clk(clk), .rst_n(rst_n), .in_valid(v1), .a(nv1), .side_in(s1),
        .out_valid(ve), .y(e), .side_out(se));

    // d = 1 + e
    wire [31:0] d;
    fp32_add_comb a_d (.a(32'h3F800000), .b(e), .y(d));
    reg          vd;
    reg [31:0]   d1;
    reg [SW-1:0] sd;
    always @(posedge clk) begin
        vd <= rst_n & ve;
        d1 <= d;
        sd <= se;
    end

    // r = 1/d
    wire          vr;
    wire [31:0]   r;
    wire [SW-1:0] sr;
    fp32_recip_pipe #(.ITERS(RECIP_ITERS), .SIDE_W(SW)) u_rcp (
        .clk(clk), .rst_n(rst_n), .in_valid(vd), .a(d1), .side_in(sd),
        .out_valid(vr), .y(r), .side_out(sr));

    // output stage: y = x * r
    wire [31:0] g;
    fp32_mul_comb m_g (.a(sr[SW-1 -: 32]), .b(r), .y(g));
    always @(posedge clk) begin
        out_valid <= rst_n & vr;
        y         <= sr[1] ? 32'h7FC00000 :
                     sr[0] ? 32'h80000000 :
                             g;
    end
endmodule
